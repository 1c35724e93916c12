"""Async scheduling (decode step N+1 launched before step N's tokens are read) changes when the
host works, never what is generated: every case here runs the same requests with it on and off
and expects the same tokens, and no KV block left in use."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from ember import LLM, SamplingParams
from ember.engine.args import EngineArgs
from ember.engine.core import EngineCore
from ember.engine.messages import EngineCoreOutput
from ember.registry import ModelStore, default_home

PROMPTS = [
    [5, 17, 42, 99, 7, 3, 250, 11],
    [300, 12, 8, 64, 21, 77, 5, 6, 9, 10, 150, 2, 33, 44, 55, 66, 88, 12, 1],
    [9, 9, 9],
    [1],
    list(range(40, 110)),
]


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return ModelStore(default_home()).resolve("tiny").path


def generate(tiny_dir: Path, async_: bool, params: list[SamplingParams], **kw: Any) -> Any:
    llm = LLM(
        str(tiny_dir), dtype="float32", device="cpu", max_num_seqs=8, async_scheduling=async_, **kw
    )
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)
    core = llm.engine.core
    assert core.kv.num_used_blocks == 0 and not core.scheduler.has_unfinished()
    return [(o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in outs], core


def test_greedy_seeded_and_stopping_requests_match_synchronous_scheduling(tiny_dir: Path) -> None:
    params = [
        SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True),
        SamplingParams(temperature=0.9, top_k=40, top_p=0.9, seed=11, max_tokens=30),
        SamplingParams(temperature=0.0, max_tokens=40, stop_token_ids=[5, 17, 33, 99, 250]),
        SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True),
        SamplingParams(temperature=0.7, seed=3, max_tokens=12, ignore_eos=True),
    ]
    sync, _ = generate(tiny_dir, False, params)
    pipelined, core = generate(tiny_dir, True, params)
    assert pipelined == sync
    assert core.pipeline is not None and core.pipeline.launched_ahead > 20


def test_requests_that_need_the_host_between_steps_match(tiny_dir: Path) -> None:
    """Penalties, logprobs and min_tokens read each token on the host: those steps run
    synchronously, beside pipelined ones."""
    params = [
        SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=16, repetition_penalty=1.3),
        SamplingParams(temperature=0.0, max_tokens=16, logprobs=2, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=16, min_tokens=10, stop_token_ids=[5, 9]),
        SamplingParams(temperature=0.0, max_tokens=16, presence_penalty=0.5),
    ]
    assert generate(tiny_dir, True, params)[0] == generate(tiny_dir, False, params)[0]


def test_preemption_under_a_small_kv_cache_matches(tiny_dir: Path) -> None:
    params = [SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)] * len(PROMPTS)
    small = {"block_size": 4, "num_kv_blocks": 24}
    sync, _ = generate(tiny_dir, False, params, **small)
    pipelined, core = generate(tiny_dir, True, params, **small)
    assert pipelined == sync
    assert core.scheduler.num_preemptions > 0
    assert core.pipeline is not None and core.pipeline.launched_ahead > 0


def drive(core: EngineCore, steps: list[tuple[str, Any]]) -> dict[str, list[int]]:
    """Run a script of ("add", (id, prompt, params)) / ("abort", id) / ("step", n) / ("drain",
    None) against a core; returns each request's tokens."""
    tokens: dict[str, list[int]] = {}

    def collect(outs: list[EngineCoreOutput]) -> None:
        for o in outs:
            tokens.setdefault(o.request_id, []).extend(o.new_token_ids)

    for kind, arg in steps:
        if kind == "add":
            rid, prompt, params = arg
            core.add_request(core.make_request(rid, prompt, params, frozenset([2])))
        elif kind == "abort":
            core.abort([arg])
        elif kind == "step":
            for _ in range(arg):
                collect(core.step())
        else:
            while core.has_unfinished():
                collect(core.step())
    return tokens


def test_arrivals_and_aborts_while_a_step_is_in_flight(tiny_dir: Path) -> None:
    """A request that arrives is admitted into the next step launched ahead (its prompt from
    the host, the others' tokens from the device); an abort frees the request at once. Same
    tokens as without the pipeline (the aborted one: a prefix of them), nothing left
    allocated, and nearly every step launched ahead."""
    greedy = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    script: list[tuple[str, Any]] = [
        ("add", ("a", PROMPTS[0], greedy)),
        ("add", ("b", PROMPTS[1], greedy)),
        ("step", 5),
        ("add", ("c", PROMPTS[4], greedy)),
        ("step", 4),
        ("abort", "b"),
        ("step", 3),
        ("add", ("d", PROMPTS[2], greedy)),
        ("drain", None),
    ]
    results = []
    for async_ in (False, True):
        args = EngineArgs(
            model=str(tiny_dir), dtype="float32", device="cpu", max_num_seqs=8,
            async_scheduling=async_,
        )  # fmt: skip
        core = EngineCore(args)
        results.append(drive(core, script))
        assert core.kv.num_used_blocks == 0 and not core.scheduler.has_unfinished()
        if core.pipeline is not None:
            assert core.pipeline.launched_ahead >= core.step_times.steps - 3
    sync, pipelined = results
    for rid in ("a", "c", "d"):
        assert pipelined[rid] == sync[rid] and len(sync[rid]) == 20
    shorter, longer = sorted((sync["b"], pipelined["b"]), key=len)
    assert longer[: len(shorter)] == shorter and len(longer) < 20


def random_script(rng: random.Random) -> list[tuple[str, Any]]:
    script: list[tuple[str, Any]] = []
    ids: list[str] = []
    for k in range(rng.randint(2, 7)):
        rid = f"r{k}"
        kind = rng.random()
        if kind < 0.4:
            params = SamplingParams(temperature=0.0, max_tokens=rng.randint(1, 24), ignore_eos=True)
        elif kind < 0.7:
            params = SamplingParams(
                temperature=0.8, top_p=0.9, seed=rng.randint(0, 99), max_tokens=rng.randint(1, 24)
            )
        elif kind < 0.85:
            stops = rng.sample(range(3, 400), 12)
            params = SamplingParams(temperature=0.0, max_tokens=24, stop_token_ids=stops)
        else:
            params = SamplingParams(temperature=0.0, max_tokens=12, logprobs=1, ignore_eos=True)
        prompt = [rng.randint(3, 900) for _ in range(rng.randint(1, 60))]
        script.append(("add", (rid, prompt, params)))
        ids.append(rid)
        script.append(("step", rng.randint(0, 6)))
        if rng.random() < 0.15:
            script.append(("abort", rng.choice(ids)))
    script.append(("drain", None))
    return script


@pytest.mark.parametrize("seed", range(12))
def test_random_scripts_match_synchronous_scheduling(tiny_dir: Path, seed: int) -> None:
    script = random_script(random.Random(seed))
    aborted = {arg for kind, arg in script if kind == "abort"}
    results = []
    for async_ in (False, True):
        args = EngineArgs(
            model=str(tiny_dir), dtype="float32", device="cpu", max_num_seqs=4,
            block_size=4, num_kv_blocks=48, async_scheduling=async_,
            max_num_batched_tokens=(8, 16, 2048)[seed % 3],  # chunked prefills in flight too
        )  # fmt: skip
        core = EngineCore(args)
        results.append(drive(core, script))
        assert core.kv.num_used_blocks == 0 and not core.scheduler.has_unfinished()
    sync, pipelined = results
    for rid in sync.keys() | pipelined.keys():
        a, b = sync.get(rid, []), pipelined.get(rid, [])
        if rid in aborted:  # stopped at different points: one is a prefix of the other
            shorter, longer = sorted((a, b), key=len)
            assert longer[: len(shorter)] == shorter
        else:
            assert a == b, rid


def test_step_times_split_graph_and_eager_steps() -> None:
    from ember.engine.core import StepTimes

    times = StepTimes()
    times.add(0.001, 0.010, 0.0005, graph=True)
    times.add(0.003, 0.012, 0.0005, graph=True)
    times.add(0.100, 0.200, 0.0010, graph=False)
    summary = times.summary()
    assert summary.startswith("3 steps, per step: schedule 34.67 ms, execute 74.00 ms")
    assert "2 graph steps at 11.00 ms (schedule 2.00 ms)" in summary
    assert "eager at 200.00 ms (schedule 100.00 ms)" in summary


def test_a_batch_that_wants_a_graph_drains_the_pipeline_for_its_capture(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch padded to a bigger CUDA graph wants its own size captured; capture waits for a
    step with nothing in flight, so the pipeline ends there instead of padding every step of
    a batch that never drains. The tokens are unchanged."""
    params = [SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)] * len(PROMPTS)
    llm = LLM(str(tiny_dir), dtype="float32", device="cpu", max_num_seqs=8, async_scheduling=True)
    core = llm.engine.core
    assert core.pipeline is not None
    looks = 0
    wanted = False  # as GraphFamily.wanted: set by a padded batch, cleared by its capture
    drained_at_want: list[bool] = []
    captures: list[tuple[bool, bool]] = []

    def wants_capture() -> bool:
        nonlocal looks, wanted
        looks += 1
        if looks == 5:
            wanted = True
            drained_at_want.append(True)
        return wanted

    def capture_next() -> bool:
        nonlocal wanted
        assert core.pipeline is not None
        captures.append((core.pipeline.inflight is None, core.scheduler.has_unfinished()))
        wanted = False
        return True

    monkeypatch.setattr(core.runner, "wants_capture", wants_capture)
    monkeypatch.setattr(core.runner, "capture_next", capture_next)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)
    sync, _ = generate(tiny_dir, False, params)
    assert [(o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in outs] == sync
    assert drained_at_want == [True]
    # Captured once, mid-run (requests still unfinished), with no step in flight.
    assert captures == [(True, True)]


def test_on_by_default_for_cuda_only(tiny_dir: Path) -> None:
    """On the CPU a step launched ahead is computed ahead: it would only delay each token."""
    llm = LLM(str(tiny_dir), dtype="float32", device="cpu", max_num_seqs=2)
    assert llm.engine.core.pipeline is None
    forced = LLM(
        str(tiny_dir), dtype="float32", device="cpu", max_num_seqs=2, async_scheduling=True
    )
    assert forced.engine.core.pipeline is not None
