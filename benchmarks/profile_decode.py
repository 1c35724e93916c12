"""Where a decode step's GPU time goes: torch.profiler over decode steps, kernels grouped by
name, at a given batch size, and how much of each step's wall time the GPU sat idle.

    python benchmarks/profile_decode.py --shape llama-3.1-8b --batch 1
    python benchmarks/profile_decode.py --batch 256 --graphs --no-async-scheduling

Eager by default (every kernel named); --graphs replays the captured decode graphs as serving
does, so the idle share measures the host gap between steps that the graphs leave.
--prefill profiles the prompt steps instead: `batch` prompts of 512 tokens, chunked by the
engine's token budget (8192 by default), with the matmuls' share of the GEMM peak.

    python benchmarks/profile_decode.py --batch 256 --prefill
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import (
    SHAPES,
    dummy_model_dir,
    gemm_peak_tflops,
    launched_ahead,
    prefill_flops_per_token,
    random_prompts,
)
from ember import LLM, SamplingParams
from ember.engine.core import StepTimes
from ember.engine.llm import TokensPrompt
from ember.engine.llm_engine import LLMEngine

CHUNK = 8192  # prompt tokens a step (max_num_batched_tokens)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shape", default="llama-3.1-8b", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--graphs", action="store_true", help="replay CUDA graphs (as serving does)")
    ap.add_argument("--no-async-scheduling", dest="async_scheduling", action="store_false")
    ap.add_argument("--prefill", action="store_true", help="profile the prompt steps instead")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        llm = LLM(
            str(dummy_model_dir(args.shape, Path(tmp))),
            dtype="bfloat16",
            device="cuda",
            load_format="dummy",
            max_model_len=4096,
            max_num_seqs=max(args.batch),
            max_num_batched_tokens=CHUNK,  # as bench_engine.py
            enforce_eager=not args.graphs,
            capture_all_graphs=args.graphs,
            async_scheduling=args.async_scheduling,
        )
        vocab = SHAPES[args.shape]["vocab_size"]
        for batch in args.batch:
            prompts = [
                TokensPrompt(prompt_token_ids=p) for p in random_prompts(batch, 512, vocab, batch)
            ]
            params = SamplingParams(
                temperature=0.0, max_tokens=4, ignore_eos=True, detokenize=False
            )
            llm.generate(prompts, params)  # warm-up
            engine = llm.engine
            ids = [f"p{batch}-{i}" for i in range(batch)]
            # Fresh prompts: the prefix cache must not serve the warm-up's again.
            for rid, tokens in zip(
                ids, random_prompts(batch, 512, vocab, 10_000 + batch), strict=True
            ):
                engine.add_request(
                    rid,
                    tokens,
                    SamplingParams(
                        temperature=0.0,
                        # Chunked prefill lets the first requests decode while the last
                        # prefill (the async pipeline adds a step or two): ample room, so
                        # every row runs through both measured stretches; aborted after.
                        max_tokens=2 * args.steps + 16 + 2 * -(-batch * 512 // CHUNK),
                        ignore_eos=True,
                        detokenize=False,
                    ),
                )
            if args.prefill:
                profile_prefill(engine, args.shape, batch)
                finish(engine, ids)
                continue
            engine.step()  # prefill (and any chunks): not profiled
            while prefilling(engine):
                engine.step()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                began = time.perf_counter()
                for _ in range(args.steps):
                    engine.step()
                torch.cuda.synchronize()
                wall_ms = (time.perf_counter() - began) * 1000 / args.steps
            core = engine.core
            core.step_times = StepTimes()
            ahead = launched_ahead(core)
            rows_before = len(core.scheduler.running)
            began = time.perf_counter()
            for _ in range(args.steps):  # the same steps, unprofiled
                engine.step()
            torch.cuda.synchronize()
            plain_ms = (time.perf_counter() - began) * 1000 / args.steps
            ahead = launched_ahead(core) - ahead
            times = core.step_times.summary()
            rows_after = len(core.scheduler.running)
            # The graph of this batch, with the last step's inputs (every row still running).
            replayed = replay_ms(llm, batch) if args.graphs else None
            finish(engine, ids)
            totals, counts = kernel_totals(prof)
            busy_ms = sum(totals.values()) / args.steps / 1000
            print(
                f"batch {batch}: GPU kernel time per decode step {busy_ms:.2f} ms, "
                f"{sum(counts.values()) / args.steps:.0f} kernels per step; wall {wall_ms:.2f} ms "
                f"per step (profiled), GPU idle {max(0.0, 1 - busy_ms / wall_ms):.0%}"
            )
            print(
                f"  unprofiled: {plain_ms:.2f} ms per step ({rows_before} -> {rows_after} rows "
                f"running), {ahead} of {args.steps} launched before the previous step's tokens "
                f"were read; {times}"
            )
            if replayed is not None:
                print(f"  the decode graph alone, replayed back to back: {replayed:.2f} ms")
            print_kernels(totals, counts, args.steps)


def prefilling(engine: LLMEngine) -> bool:
    """Whether a request still waits or has prompt tokens left to compute."""
    sched = engine.core.scheduler
    return bool(sched.waiting) or any(
        r.num_computed_tokens < r.num_prompt_tokens for r in sched.running
    )


def finish(engine: LLMEngine, request_ids: list[str]) -> None:
    """Abort the measured requests and step until the engine is idle."""
    engine.abort(request_ids)
    while engine.has_unfinished():
        engine.step()


def kernel_totals(prof: profile) -> tuple[dict[str, float], dict[str, int]]:
    """GPU µs and launches of each kernel name (first 60 characters) in a profile."""
    totals: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            name = evt.name[:60]
            totals[name] += evt.device_time
            counts[name] += 1
    return totals, counts


def print_kernels(
    totals: dict[str, float], counts: dict[str, int], steps: int, top: int = 14
) -> None:
    for name, t in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {t / steps / 1000:7.3f} ms  {counts[name] / steps:5.0f}x  {name}")


def profile_prefill(engine: LLMEngine, shape: str, batch: int) -> None:
    """Profile the steps that run the requests' prompts (the requests are added, not stepped);
    the matmuls (cuBLAS/CUTLASS kernels: names with gemm, sm90 or cutlass) against the GEMM peak."""
    torch.cuda.synchronize()
    prompt_tokens = sum(r.num_prompt_tokens for r in engine.core.scheduler.waiting)
    steps = 0
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        began = time.perf_counter()
        while prefilling(engine):
            engine.step()
            steps += 1
        torch.cuda.synchronize()
        wall_s = time.perf_counter() - began
    totals, counts = kernel_totals(prof)
    busy_s = sum(totals.values()) / 1e6
    matmul_s = sum(t for n, t in totals.items() if _is_matmul(n)) / 1e6
    flops = prompt_tokens * prefill_flops_per_token(SHAPES[shape], 512)
    peak = gemm_peak_tflops(torch.device("cuda"))
    print(
        f"prefill of {batch} x 512 tokens: {steps} steps, wall {wall_s:.3f} s (profiled), GPU "
        f"kernels {busy_s:.3f} s, matmul kernels {matmul_s:.3f} s; {flops / busy_s / 1e12:.0f} "
        f"TFLOP/s over the kernels' time, GEMM peak {peak:.0f} TFLOP/s in this run"
    )
    print_kernels(totals, counts, steps, top=20)


def _is_matmul(name: str) -> bool:
    low = name.lower()
    return "gemm" in low or "sm90" in low or "cutlass" in low


def replay_ms(llm: LLM, batch: int, reps: int = 20) -> float:
    """GPU time of one replay of the decode graph that `batch` rows use, with no host work
    between replays (it rewrites the same KV slots each time)."""
    graphs = llm.engine.core.runner.graphs
    assert graphs is not None
    size = graphs.family.bucket(batch)
    assert size is not None
    graph = graphs.family.graphs[size]
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


if __name__ == "__main__":
    main()
