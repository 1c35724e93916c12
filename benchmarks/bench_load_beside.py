"""The weights' load alone and beside a busy Python thread, at Python's default GIL switch
interval (5 ms) and at the one load_model sets while it streams (LOAD_SWITCH_INTERVAL).

`ember serve` runs the kernels' warm-up (Python launching Triton kernels) on a thread while the
weights stream; every chunk's read and copy needs the GIL briefly, so a busy thread can leave
ring slots idle for a whole switch interval. This measures that in one process: a Llama-shaped
model of random bf16 weights (--layers of the 8B shape, written once under --dir and read from
the page cache), loaded by ember.models.load_model.

    python benchmarks/bench_load_beside.py --device cpu --layers 2       # the development machine
    python benchmarks/bench_load_beside.py --device cuda --layers 32 --vocab 128256 --shards 4 \
        --dir .bench/llama-3.1-8b-random                                   # bench_load.py's model
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_load import llama_8b_config, write_model
from ember.models import load_model, loader


def timed_load(model_dir: Path, device: torch.device, busy: bool) -> float:
    """Seconds for one load_model, with a thread running Python the whole time if `busy`."""
    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i

    thread = threading.Thread(target=spin, daemon=True)
    if busy:
        thread.start()
    try:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model = load_model(model_dir, torch.bfloat16, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    finally:
        stop.set()
        if busy:
            thread.join()
    del model
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path(".bench/llama-beside"))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.empty(1, device=device)
    nbytes = write_model(
        args.dir, llama_8b_config(args.layers, args.vocab), args.shards, torch.device("cpu")
    )
    print(f"model: {nbytes / 1e9:.2f} GB in {args.dir}; device {device}; best of {args.repeats}")
    timed_load(args.dir, device, busy=False)  # warm: page cache, first calls
    chosen = loader.LOAD_SWITCH_INTERVAL
    print(f"{'switch interval':<18} {'alone':>14} {'beside a busy thread':>24}")
    for interval in (0.005, chosen):
        loader.LOAD_SWITCH_INTERVAL = interval
        alone = min(timed_load(args.dir, device, busy=False) for _ in range(args.repeats))
        beside = min(timed_load(args.dir, device, busy=True) for _ in range(args.repeats))
        print(
            f"{interval * 1000:>6.1f} ms{'':<9} {alone:>7.3f} s {nbytes / alone / 1e9:>4.1f} GB/s"
            f" {beside:>12.3f} s {nbytes / beside / 1e9:>5.1f} GB/s"
        )
    loader.LOAD_SWITCH_INTERVAL = chosen


if __name__ == "__main__":
    main()
