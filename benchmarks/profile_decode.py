"""Where a decode step's GPU time goes: torch.profiler over decode steps, kernels grouped by
name, at a given batch size, and how much of each step's wall time the GPU sat idle.

    python benchmarks/profile_decode.py --shape llama-3.1-8b --batch 1
    python benchmarks/profile_decode.py --batch 256 --graphs --no-async-scheduling

Eager by default (every kernel named); --graphs replays the captured decode graphs as serving
does, so the idle share measures the host gap between steps that the graphs leave.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import SHAPES, dummy_model_dir, random_prompts
from ember import LLM, SamplingParams
from ember.engine.llm import TokensPrompt


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shape", default="llama-3.1-8b", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--graphs", action="store_true", help="replay CUDA graphs (as serving does)")
    ap.add_argument("--no-async-scheduling", dest="async_scheduling", action="store_false")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        llm = LLM(
            str(dummy_model_dir(args.shape, Path(tmp))),
            dtype="bfloat16",
            device="cuda",
            load_format="dummy",
            max_model_len=4096,
            max_num_seqs=max(args.batch),
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
            for i, p in enumerate(prompts):
                engine.add_request(
                    f"p{batch}-{i}",
                    p["prompt_token_ids"],
                    SamplingParams(
                        temperature=0.0,
                        max_tokens=2 * args.steps + 2,
                        ignore_eos=True,
                        detokenize=False,
                    ),
                )
            engine.step()  # prefill (and any chunks): not profiled
            while engine.core.scheduler.waiting or any(
                r.num_computed_tokens < r.num_prompt_tokens for r in engine.core.scheduler.running
            ):
                engine.step()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                began = time.perf_counter()
                for _ in range(args.steps):
                    engine.step()
                torch.cuda.synchronize()
                wall_ms = (time.perf_counter() - began) * 1000 / args.steps
            began = time.perf_counter()
            for _ in range(args.steps):  # the same steps, unprofiled
                engine.step()
            torch.cuda.synchronize()
            plain_ms = (time.perf_counter() - began) * 1000 / args.steps
            while engine.has_unfinished():
                engine.step()
            totals: dict[str, float] = defaultdict(float)
            counts: dict[str, int] = defaultdict(int)
            for evt in prof.events():
                if evt.device_type == torch.autograd.DeviceType.CUDA:
                    name = evt.name[:60]
                    totals[name] += evt.device_time
                    counts[name] += 1
            total = sum(totals.values()) / args.steps
            busy_ms = total / 1000
            print(
                f"batch {batch}: GPU kernel time per decode step {busy_ms:.2f} ms, "
                f"{sum(counts.values()) / args.steps:.0f} kernels per step; wall {wall_ms:.2f} ms "
                f"per step (profiled), GPU idle {max(0.0, 1 - busy_ms / wall_ms):.0%}"
            )
            print(f"  unprofiled: {plain_ms:.2f} ms per step")
            if args.graphs:
                print(
                    f"  the decode graph alone, replayed back to back: {replay_ms(llm, batch):.2f} ms"
                )
            for name, t in sorted(totals.items(), key=lambda kv: -kv[1])[:14]:
                print(
                    f"  {t / args.steps / 1000:7.3f} ms  {counts[name] / args.steps:5.0f}x  {name}"
                )


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
