"""EMBER_L2_PREFETCH (layers/l2_prefetch.py): the switch's values, and that it never acts where
it cannot (CPU tensors, steps above MAX_ROWS); its effect on CUDA is timed by gpu_check."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest
import torch

from ember.layers import l2_prefetch


def test_mode_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, want in (("", "off"), ("BULK", "bulk"), (" line ", "line"), ("off", "off")):
        monkeypatch.setenv("EMBER_L2_PREFETCH", value)
        assert l2_prefetch.mode() == want
    monkeypatch.delenv("EMBER_L2_PREFETCH")
    assert l2_prefetch.mode() == "off"


def test_a_bad_value_says_what_to_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_L2_PREFETCH", "yes")
    with pytest.raises(ValueError, match="off, bulk, line"):
        l2_prefetch.mode()


def test_never_starts_on_cpu_or_for_large_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(l2_prefetch, "MODE", "bulk")
    weight = torch.zeros(8, 8)
    assert l2_prefetch.start(weight, torch.zeros(1, 8)) is None
    assert l2_prefetch.start(weight, torch.zeros(l2_prefetch.MAX_ROWS + 1, 8)) is None
    l2_prefetch.join(None)  # nothing to wait for


def test_the_tiny_model_generates_with_it_set() -> None:
    """With the switch on, a CPU engine runs as before (the layer asks, and nothing starts)."""
    code = (
        "from ember import LLM, SamplingParams\n"
        "from ember.registry import ModelStore, default_home\n"
        "tiny = str(ModelStore(default_home()).resolve('tiny').path)\n"
        "llm = LLM(tiny, dtype='float32', device='cpu', block_size=4)\n"
        "p = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)\n"
        "print(llm.generate([{'prompt_token_ids': [5, 17, 42]}], p)[0].outputs[0].token_ids)\n"
    )
    env = {**os.environ, "EMBER_L2_PREFETCH": "bulk"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(ast.literal_eval(out.stdout.strip().splitlines()[-1])) == 4
