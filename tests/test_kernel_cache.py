"""`ember serve` keeps Triton's compiled kernels under ember's home unless told otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ember.kernel_cache import use_kernel_cache


def test_defaults_under_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRITON_CACHE_DIR", "")  # unset (and restored after the test)
    path = use_kernel_cache(tmp_path)
    assert path == tmp_path / "kernels" / "triton"
    assert os.environ["TRITON_CACHE_DIR"] == str(path)


def test_an_explicit_cache_dir_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRITON_CACHE_DIR", "/mnt/kernels")
    assert use_kernel_cache(tmp_path) == Path("/mnt/kernels")
