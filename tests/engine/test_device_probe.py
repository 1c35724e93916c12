"""The API side decides where the core runs without importing torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ember.engine.device_probe import expects_cuda


def test_explicit_devices() -> None:
    assert expects_cuda("cuda")
    assert expects_cuda("cuda:1")
    assert not expects_cuda("cpu")


@pytest.mark.parametrize("visible", ["", "-1"])
def test_hidden_gpus_mean_cpu(monkeypatch: pytest.MonkeyPatch, visible: str) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not imported yet
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert not expects_cuda("auto")


def test_api_side_imports_no_torch() -> None:
    """`ember serve` on CUDA: the API process (server, engine client, tokenizer) never imports
    torch, so the core's process imports it while the API process starts."""
    code = (
        "import sys, ember.cli, ember.server.app, ember.engine.async_engine; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
