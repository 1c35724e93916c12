"""Where the engine's start-up goes after `import torch`, function by function (cProfile).

`ember serve` makes the kernels' first calls beside the weights' load (EMBER_WARM_BESIDE_LOAD);
on the H200 they bounded its weights phase (0.93-1.12 s against ~0.55 s for the load itself)
until this script showed Triton's cache-key hash in them, now computed on a thread
(ember.kernel_cache; docs/benchmarks.md, eighth session). This builds an EngineCore for the Llama-3.1-8B shape with
random weights (no files) in this process, with the warm-up pass in the main thread
(EMBER_WARM_BESIDE_LOAD=0) so that cProfile sees it, and prints the phases, then the functions
that took the longest. The first run on a machine compiles Triton's kernels: pass --runs 2 and
read the last.

    python benchmarks/profile_start.py --runs 2
    python benchmarks/profile_start.py --runs 1 --shape qwen2.5-0.5b --device cpu --top 5  # smoke
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def one_start(model_dir: Path, device: str, profile: bool, top: int) -> None:
    os.environ["EMBER_WARM_BESIDE_LOAD"] = "0"
    t0 = time.monotonic()
    import torch

    from ember.engine.args import EngineArgs
    from ember.engine.core import EngineCore

    print(f"imports: {time.monotonic() - t0:.2f} s", flush=True)
    args = EngineArgs(model=str(model_dir), load_format="dummy", device=device)
    profiler = cProfile.Profile() if profile else None
    t0 = time.monotonic()
    if profiler is not None:
        profiler.enable()
    core = EngineCore(args)
    if core.device.type == "cuda":
        torch.cuda.synchronize()
    if profiler is not None:
        profiler.disable()
    print(f"EngineCore built in {time.monotonic() - t0:.2f} s: {core.startup.summary()}")
    if core.device.type == "cuda":  # the profiling pass is CUDA's (it sizes the KV cache)
        t0 = time.monotonic()
        core._profile_run()
        torch.cuda.synchronize()
        print(f"a second profiling pass: {time.monotonic() - t0:.3f} s")
    if profiler is None:
        return
    for key in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(top)
        print(f"\n--- by {key} ---")
        print("\n".join(out.getvalue().splitlines()[6:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=2, help="fresh processes; the last is profiled")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--shape", default="llama-3.1-8b", help="a shape of benchmarks.common.SHAPES")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        one_start(args.child, args.device, args.profile, args.top)
        return
    from benchmarks.common import dummy_model_dir

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = dummy_model_dir(args.shape, Path(tmp))
        for run in range(1, args.runs + 1):
            last = run == args.runs
            print(f"=== run {run}{' (profiled)' if last else ''}", flush=True)
            cmd = [sys.executable, __file__, "--child", str(model_dir), "--top", str(args.top)]
            cmd += ["--device", args.device]
            subprocess.run(cmd + (["--profile"] if last else []), check=False)


if __name__ == "__main__":
    main()
