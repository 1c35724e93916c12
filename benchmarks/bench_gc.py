"""The garbage collector's first full collection in a fresh engine process, and the weights' load
it lands in: with the imports' heap frozen (`freeze_import_heap`, what the engine process does)
against without (EMBER_GC_FREEZE=0), alternating, each load in a fresh process.

A process that has just imported torch, Triton and the engine holds ~170,000 objects the
collector tracks, and is due a full collection that scans them all while every other thread
waits for the GIL. Each child imports what the engine process imports, then streams a
Llama-shaped model of random bf16 weights (written once under --dir, read from the page cache)
with load_model (config, headers, the model's build, the weights through the loader's ring) the
way a load onto the GPU goes: on CUDA from the local files as they are; on the CPU, where a local
load skips the ring, through a source that hides its directory. It reports the load's seconds
and the full collections during it.

    python benchmarks/bench_gc.py --device cpu --layers 2               # the development machine
    python benchmarks/bench_gc.py --device cuda --layers 32 --vocab 128256 --shards 4 \
        --dir .bench/llama-3.1-8b-random --chunk-mib 32     # bench_load.py's model and chunks

(`device_run.sh gc` measures the same on the GPU with bench_load.py's fresh loads and with
`ember serve` starts.)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_load import llama_8b_config, preimport, write_model
from benchmarks.common import env_spec
from ember.heap import freeze_import_heap
from ember.loader.local import LocalSource
from ember.loader.streamer import StreamOptions
from ember.models import load_model

MiB = 1024 * 1024


class _Hidden(LocalSource):
    """Local files read as a remote source reads them: through the ring, also onto the CPU."""

    def local_dir(self) -> Path | None:
        return None


class Collections:
    """Full collections (generation 2) while installed: count and summed pause."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.count += 1
            self.seconds += time.perf_counter() - self._began


def child(root: Path, device: torch.device, chunk_mib: int) -> None:
    preimport("ember", root)  # what the engine process imports before a load
    tracked = len(gc.get_objects())
    freeze_import_heap()  # EMBER_GC_FREEZE=0 in the environment leaves it undone
    frozen = gc.get_freeze_count()
    source = LocalSource(root) if device.type == "cuda" else _Hidden(root)
    options = StreamOptions(chunk_bytes=chunk_mib * MiB)
    if device.type == "cuda":
        torch.empty(1, device=device)
        torch.cuda.synchronize()
    seen = Collections()
    gc.callbacks.append(seen)
    start = time.perf_counter()
    model = load_model(source, torch.bfloat16, device, options=options)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    gc.callbacks.remove(seen)
    source.close()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(
        json.dumps(
            {
                "seconds": seconds,
                "bytes": nbytes,
                "tracked": tracked,
                "frozen": frozen,
                "full": seen.count,
                "full_seconds": seen.seconds,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path(".bench/llama-gc"))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--chunk-mib", type=int, default=1, help="the ring's chunk size")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the two settings")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.child:
        child(args.dir, device, args.chunk_mib)
        return
    nbytes = write_model(args.dir, llama_8b_config(args.layers, args.vocab), args.shards, device)
    print(
        f"model: {nbytes / 1e9:.2f} GB under {args.dir}; device {device}; chunks of "
        f"{args.chunk_mib} MiB; date {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    )
    cmd = [sys.executable, __file__, "--child", "--dir", str(args.dir), "--device", args.device]
    cmd += ["--chunk-mib", str(args.chunk_mib)]
    subprocess.run(cmd, capture_output=True, check=False)  # page cache warmed, not timed
    results: dict[str, list[float]] = {"frozen": [], "EMBER_GC_FREEZE=0": []}
    for _ in range(args.repeats):
        for label in results:
            env = os.environ | env_spec("" if label == "frozen" else label)
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            if proc.returncode != 0:
                print(f"  {label}: FAILED {proc.stderr.strip()[-2000:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results[label].append(r["seconds"])
            print(
                f"  {label:<18} {r['seconds'] * 1e3:7.1f} ms {r['bytes'] / r['seconds'] / 1e9:6.2f} "
                f"GB/s; tracked after imports {r['tracked']}, frozen {r['frozen']}; full "
                f"collections in the load: {r['full']} ({r['full_seconds'] * 1e3:.1f} ms)",
                flush=True,
            )
    if all(results.values()):
        best = {k: min(v) for k, v in results.items()}
        print(
            f"best: frozen {best['frozen'] * 1e3:.1f} ms, not frozen "
            f"{best['EMBER_GC_FREEZE=0'] * 1e3:.1f} ms "
            f"(x{best['EMBER_GC_FREEZE=0'] / best['frozen']:.2f})"
        )


if __name__ == "__main__":
    main()
