"""Where a decode step's GPU time goes: torch.profiler over eager decode steps (the same kernels
a CUDA graph replays), kernels grouped by name, at a given batch size.

    python benchmarks/profile_decode.py --shape llama-3.1-8b --batch 1
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import SHAPES, dummy_model_dir, random_prompts


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shape", default="llama-3.1-8b", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--steps", type=int, default=16)
    args = ap.parse_args()
    from ember import LLM, SamplingParams

    with tempfile.TemporaryDirectory() as tmp:
        llm = LLM(
            str(dummy_model_dir(args.shape, Path(tmp))),
            dtype="bfloat16",
            device="cuda",
            load_format="dummy",
            max_model_len=4096,
            max_num_seqs=max(args.batch),
            enforce_eager=True,
        )
        vocab = SHAPES[args.shape]["vocab_size"]
        for batch in args.batch:
            prompts = [{"prompt_token_ids": p} for p in random_prompts(batch, 512, vocab, batch)]
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
                        max_tokens=args.steps + 1,
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
                for _ in range(args.steps):
                    engine.step()
                torch.cuda.synchronize()
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
            print(
                f"batch {batch}: GPU kernel time per decode step {total / 1000:.2f} ms, "
                f"{sum(counts.values()) / args.steps:.0f} kernels per step"
            )
            for name, t in sorted(totals.items(), key=lambda kv: -kv[1])[:14]:
                print(
                    f"  {t / args.steps / 1000:7.3f} ms  {counts[name] / args.steps:5.0f}x  {name}"
                )


if __name__ == "__main__":
    main()
