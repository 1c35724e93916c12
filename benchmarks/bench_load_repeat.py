"""The whole 8B load repeated in one process: what does a fresh process pay that a later load
does not?

A warm load in a fresh process (bench_load.py, as `ember serve` does it) has run at 31-36 GB/s
on the H200 machines, while the same streamer moved the same files at 42-46 GB/s in a process
that had loaded before (bench_stream_paths.py, on other machines). This loads the model once, as a fresh process
does, then again in the same process, alternating three ways of starting over:

- ring new, GPU memory reused: new ring slots pinned ahead (fresh anonymous memory registered
  with CUDA, as the first load had), the parameters from torch's cache of freed blocks;
- ring new, GPU memory new: the same after torch.cuda.empty_cache(), so every parameter is a
  fresh cudaMalloc, as in the first load;
- ring kept, GPU memory new: the slots of one earlier load handed to the ring again (memory the
  copy engine has read before), fresh parameters.

Whichever of these brings the later loads back to the first one's rate names the fresh
process's cost. Every load's timeline is printed (when 10/50/90% of the bytes were handed to the
copy engine). On the H200 of 2026-12-05 (twenty-first session, docs/benchmarks.md) none did: the
first load 31.93 GB/s, every later one 30.55-33.29, the kept ring ~1 GB/s ahead at most. As
shares of each machine's page-cache rate the two had been alike all along (whole loads 80-84%,
the streamer into one buffer 77-87% at 32 MiB chunks): the higher figures were faster machines.

    python benchmarks/bench_load_repeat.py --rounds 3      # writes bench_load.py's model once
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_load import (
    Timeline,
    cached_share,
    llama_8b_config,
    load_ember,
    parallel_read,
    preimport,
    weight_paths,
    write_model,
)
from ember.heap import freeze_import_heap
from ember.loader import StreamOptions, prepin
from ember.loader.pinned import pinned_host
from ember.loader.source import Source


def pin_ahead(slots: int, nbytes: int) -> None:
    """A new pool of ring slots pinned ahead, waited for (as the imports would have)."""
    prepin._pool = prepin.SlotPool()
    prepin.start("cuda", slots, nbytes)
    thread = prepin._pool.thread
    if thread is not None:
        thread.join()


def hand_back(kept: list[torch.Tensor], nbytes: int) -> None:
    """The same pinned slots offered to the next ring (kept alive here, so never unregistered)."""
    pool = prepin.SlotPool()
    pool._nbytes = nbytes
    pool._ready = list(kept)
    pool.count = len(kept)
    prepin._pool = pool


def one_load(root: Path, device: torch.device, label: str) -> float:
    timeline = Timeline()
    torch.cuda.synchronize()
    start = time.perf_counter()
    timeline.start = start
    model = load_ember(root, device, direct=False, options=StreamOptions(), progress=timeline)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())  # type: ignore[attr-defined]
    print(f"  {label:<34} {seconds:6.3f} s {nbytes / seconds / 1e9:7.2f} GB/s", flush=True)
    print(f"      {timeline.summary(seconds)}", flush=True)
    del model
    gc.collect()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path(".bench/llama-3.1-8b-random"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_load_repeat.py needs a CUDA device")
    device = torch.device("cuda", 0)
    print(f"GPU: {torch.cuda.get_device_name(device)}; torch {torch.__version__}")
    args.dir.mkdir(parents=True, exist_ok=True)
    write_model(args.dir, llama_8b_config(32, 128256), 4, device)
    paths = weight_paths(args.dir)
    parallel_read(paths, Source.concurrency, False)  # into the page cache
    print(f"page cache holds {100 * cached_share(paths):.0f}% of the files")
    rate = parallel_read(paths, Source.concurrency, False)
    print(f"page cache -> host memory, {Source.concurrency} threads: {rate:.2f} GB/s")
    opts = StreamOptions()
    slots = Source.concurrency + 4  # as the loader's ring
    pin_ahead(slots, opts.chunk_bytes)  # as serve does during the imports
    preimport("ember", args.dir)
    freeze_import_heap()
    torch.empty(1, device=device)
    torch.cuda.synchronize()
    one_load(args.dir, device, "first load (fresh process)")
    kept = [pinned_host(opts.chunk_bytes) for _ in range(slots)]
    scratch = torch.empty(opts.chunk_bytes, dtype=torch.uint8, device=device)
    for slot in kept:  # read by the copy engine once before any load uses them
        scratch.copy_(slot, non_blocking=True)
    torch.cuda.synchronize()
    del scratch
    variants = (
        "ring new, GPU memory reused",
        "ring new, GPU memory new",
        "ring kept, GPU memory new",
    )
    results: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            if variant.endswith("GPU memory new"):
                torch.cuda.empty_cache()
            if variant.startswith("ring kept"):
                hand_back(kept, opts.chunk_bytes)
            else:
                pin_ahead(slots, opts.chunk_bytes)
            results[variant].append(one_load(args.dir, device, variant))
            prepin.release()
    print("best of each (GB/s):")
    total = sum(p.stat().st_size for p in paths)
    for variant, seconds in results.items():
        print(f"  {variant:<34} {total / min(seconds) / 1e9:7.2f}")
    print(f"threads alive at the end: {threading.active_count()}")


if __name__ == "__main__":
    main()
