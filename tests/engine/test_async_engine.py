"""AsyncEngine: streaming deltas, concurrent requests, aborts that free KV blocks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ember.engine.args import EngineArgs
from ember.engine.async_engine import AsyncEngine, EngineDeadError
from ember.engine.core_client import MPCoreClient
from ember.errors import InvalidRequestError
from ember.registry import ModelStore, default_home
from ember.sampling_params import OutputKind, SamplingParams


@pytest.fixture(scope="module", params=[False, True], ids=["thread", "process"])
def engine(request: pytest.FixtureRequest) -> AsyncEngine:
    """The core on a thread, and in a process of its own (the CUDA default)."""
    path: Path = ModelStore(default_home()).resolve("tiny").path
    args = EngineArgs(model=str(path), device="cpu", dtype="float32", max_num_seqs=2)
    eng = AsyncEngine(args, multiprocess=request.param)
    yield eng  # type: ignore[misc]
    eng.shutdown()


def params(kind: OutputKind, n: int = 12) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, output_kind=kind)


async def collect(engine: AsyncEngine, rid: str, kind: OutputKind) -> list[str]:
    ids = engine.tokenizer.encode("The quick brown fox")
    return [o.outputs[0].text async for o in engine.generate(rid, ids, params(kind))]


def test_deltas_add_up_to_the_cumulative_text(engine: AsyncEngine) -> None:
    async def main() -> tuple[list[str], list[str]]:
        return await asyncio.gather(
            collect(engine, "d", OutputKind.DELTA), collect(engine, "c", OutputKind.CUMULATIVE)
        )

    deltas, cumulative = asyncio.run(main())
    assert "".join(deltas) == cumulative[-1]
    assert 1 <= len(deltas) <= 12  # one per step, fewer when the reader falls behind


def test_a_reader_that_falls_behind_gets_the_queued_steps_as_one_delta(
    engine: AsyncEngine,
) -> None:
    """Tokens that queued up while the reader was busy come as one output: same tokens, same
    text, fewer outputs."""
    ids = engine.tokenizer.encode("The quick brown fox")

    async def read(rid: str, pause: float) -> list[tuple[str, list[int], str | None]]:
        got = []
        async for o in engine.generate(rid, ids, params(OutputKind.DELTA, 24)):
            c = o.outputs[0]
            got.append((c.text, list(c.token_ids), c.finish_reason))
            await asyncio.sleep(pause)
        return got

    fast = asyncio.run(read("fast", 0.0))
    slow = asyncio.run(read("slow", 0.05))
    assert "".join(t for t, _, _ in slow) == "".join(t for t, _, _ in fast)
    assert [i for _, ids_, _ in slow for i in ids_] == [i for _, ids_, _ in fast for i in ids_]
    assert len(slow) < 24 and slow[-1][2] == "length"


def test_more_requests_than_slots_all_finish(engine: AsyncEngine) -> None:
    async def main() -> list[list[str]]:
        return await asyncio.gather(
            *(collect(engine, f"many-{i}", OutputKind.FINAL_ONLY) for i in range(6))
        )

    results = asyncio.run(main())
    assert all(len(r) == 1 for r in results)
    assert len({r[0] for r in results}) == 1  # greedy, same prompt


def test_closing_the_stream_aborts_and_frees_blocks(engine: AsyncEngine) -> None:
    async def main() -> None:
        ids = engine.tokenizer.encode("abort me")
        agen = engine.generate("ab", ids, params(OutputKind.DELTA, n=2000))
        async for _ in agen:
            break
        await agen.aclose()  # type: ignore[attr-defined]
        for _ in range(200):
            s = engine.stats()
            if s.num_unfinished == 0 and s.num_used_blocks == 0 and s.num_running == 0:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"request not freed: {engine.stats()}")

    asyncio.run(main())


def test_validation_errors_raise_at_call_time(engine: AsyncEngine) -> None:
    with pytest.raises(InvalidRequestError):
        engine.generate("bad", [], params(OutputKind.DELTA))


def test_a_dead_core_fails_requests_and_health(tmp_path: Path) -> None:
    path: Path = ModelStore(default_home()).resolve("tiny").path
    args = EngineArgs(model=str(path), device="cpu", dtype="float32")
    eng = AsyncEngine(args, multiprocess=True)
    try:
        assert eng.healthy
        assert isinstance(eng.client, MPCoreClient)
        eng.client.process.kill()

        async def main() -> None:
            ids = eng.tokenizer.encode("hello")
            with pytest.raises(EngineDeadError):
                async for _ in eng.generate("x", ids, params(OutputKind.DELTA, n=50)):
                    pass

        asyncio.run(main())
        assert not eng.healthy
    finally:
        eng.shutdown()


def test_a_prespawned_core_loads_the_model_it_is_sent() -> None:
    """`ember serve` on CUDA starts the core's process before the model is known; the engine
    takes that process over and serves from it."""
    from ember.engine import core_client

    core_client.prespawn_core()
    prespawned = core_client._prespawned
    assert prespawned is not None
    path: Path = ModelStore(default_home()).resolve("tiny").path
    eng = AsyncEngine(EngineArgs(model=str(path), device="cpu", dtype="float32"), multiprocess=True)
    try:
        assert isinstance(eng.client, MPCoreClient)
        assert eng.client.process is prespawned.process
        assert core_client._prespawned is None

        async def main() -> list[int]:
            ids = eng.tokenizer.encode("hello")
            out: list[int] = []
            async for o in eng.generate("p", ids, params(OutputKind.DELTA, n=5)):
                out += o.outputs[0].token_ids
            return out

        assert len(asyncio.run(main())) == 5
    finally:
        eng.shutdown()


def test_core_steps_cross_the_process_boundary_intact() -> None:
    """CoreStep pickles as columns (fast for 256 outputs a step); nothing may change on the way."""
    import pickle

    from ember.engine.core_client import CoreStep
    from ember.engine.logprobs import PositionLogprobs
    from ember.engine.messages import EngineCoreOutput, EngineStats

    outs = [EngineCoreOutput(f"r{i}", [i], None, None, None, 0, 1.5) for i in range(5)]
    lps = [PositionLogprobs([7, 3], [-0.5, -0.25], 2)]
    outs.append(EngineCoreOutput("s", [7], lps, "stop", 7, 16, None))
    stats = EngineStats(1, 2, 3, 0.5, 4, 5, 6, 7, 8, 9, 10)
    for step in (CoreStep(outs, stats), CoreStep([], stats)):
        assert pickle.loads(pickle.dumps(step, protocol=pickle.HIGHEST_PROTOCOL)) == step


def test_merging_deltas_keeps_every_token_logprob_and_the_last_finish() -> None:
    from ember.engine.async_engine import merge_deltas
    from ember.logprobs import Logprob
    from ember.outputs import CompletionOutput, RequestMetrics, RequestOutput

    def out(
        text: str, ids: list[int], lp: float | None, finish: str | None, total: float | None = None
    ) -> RequestOutput:
        logprobs = None if lp is None else [{ids[0]: Logprob(lp, 1)}]
        c = CompletionOutput(0, text, ids, finish, None, logprobs, total)
        return RequestOutput("r", None, [1], [c], finish is not None, RequestMetrics(0.0))

    merged = merge_deltas(out("Hel", [5], -0.5, None, -0.5), out("lo", [6], -0.25, "stop", -0.75))
    assert merged is not None and merged.finished
    c = merged.outputs[0]
    assert (c.text, c.token_ids, c.finish_reason) == ("Hello", [5, 6], "stop")
    assert c.logprobs is not None and [c.logprobs[0][5].logprob, c.logprobs[1][6].logprob] == [
        -0.5,
        -0.25,
    ]
    assert c.cumulative_logprob == -0.75  # the running sum, as the later delta has it
    two = out("a", [1], None, None)
    two.outputs.append(CompletionOutput(1, "b", [2]))
    assert merge_deltas(two, out("c", [3], None, None)) is None  # n > 1: not merged
