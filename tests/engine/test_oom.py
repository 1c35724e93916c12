"""Out of GPU memory during a step preempts requests and retries, on a CPU through a fake OOM
(EMBER_TEST_FAULTS); the outputs are those of a run without the fault."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ember import LLM, SamplingParams
from ember.engine.faults import ENV
from ember.registry import ModelStore, default_home

PROMPTS = [{"prompt_token_ids": [i + 1] * 6} for i in range(4)]


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return ModelStore(default_home()).resolve("tiny").path


def run(tiny_dir: Path, async_scheduling: bool = False) -> tuple[list[list[int]], LLM]:
    llm = LLM(
        str(tiny_dir),
        dtype="float32",
        device="cpu",
        max_num_seqs=4,
        async_scheduling=async_scheduling,
    )
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    outs = llm.generate(PROMPTS, params)
    return [o.outputs[0].token_ids for o in outs], llm


def test_oom_in_a_step_preempts_and_loses_nothing(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected, _ = run(tiny_dir)
    monkeypatch.setenv(ENV, "oom@3,oom@4")
    got, llm = run(tiny_dir)
    core = llm.engine.core
    assert got == expected
    assert core.faults.steps > 4 and core.scheduler.num_preemptions >= 2
    assert core.kv.num_used_blocks == 0
    # the batch stays capped for a while, so the preempted requests do not come straight back
    assert core.scheduler.max_num_seqs < 4


def test_oom_with_async_scheduling_loses_nothing(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step launched ahead that runs out of memory ends the pipeline; the step is retried
    synchronously (and preempts if it fails again)."""
    expected, _ = run(tiny_dir)
    monkeypatch.setenv(ENV, "oom@3,oom@4,oom@9")
    got, llm = run(tiny_dir, async_scheduling=True)
    assert got == expected
    assert llm.engine.core.kv.num_used_blocks == 0


def test_a_lone_request_that_keeps_failing_stops_the_engine(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, ",".join(f"oom@{i}" for i in range(1, 8)))
    llm = LLM(str(tiny_dir), dtype="float32", device="cpu")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        llm.generate([PROMPTS[0]], SamplingParams(max_tokens=2))
