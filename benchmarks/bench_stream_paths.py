"""Ways to move a warm safetensors checkpoint into GPU memory, side by side in one process.

The loader's streaming (SafetensorsStreamer: reader threads fill a pinned ring, the main thread
enqueues every chunk's copies) stayed at 26-31 GB/s on machines whose page cache gave 36 GB/s to
16 reader threads. This times, alternating, on the same warm files and into one preallocated GPU
buffer, with the ring's slots pinned once up front so that pinning is not in any figure:

- cache T:        the page cache -> host memory alone, T threads with a 16 MiB buffer each (the
                  limit for anything that copies through host memory);
- self T/C:       T threads, each with its own pinned slots, each reading a chunk of C MiB and
                  enqueueing its copy itself on its own CUDA stream (no hand-off to another thread);
- streamer T/C:   ember's SafetensorsStreamer as the loader runs it, the same slots handed to its
                  ring (through prepin's pool).

    python benchmarks/bench_stream_paths.py               # writes bench_load.py's 8B model once
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_load import llama_8b_config, parallel_read, weight_paths, write_model
from ember.loader import prepin
from ember.loader.header import TensorMeta
from ember.loader.local import LocalSource
from ember.loader.pinned import pinned_host
from ember.loader.streamer import SafetensorsStreamer, StreamOptions

MiB = 1 << 20


class Slot:
    __slots__ = ("event", "tensor", "view")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.view = memoryview(tensor.numpy().data)
        self.event = torch.cuda.Event()


def jobs_for(fds: dict[Path, int], chunk: int) -> list[tuple[int, int, int, int]]:
    """(fd, file offset, length, destination offset) for every chunk of every file, in order."""
    out: list[tuple[int, int, int, int]] = []
    base = 0
    for p, fd in fds.items():
        size = p.stat().st_size
        out += [(fd, off, min(chunk, size - off), base + off) for off in range(0, size, chunk)]
        base += size
    return out


def thread_slots(
    pinned: list[torch.Tensor], threads: int, each: int, chunk: int
) -> list[list[Slot]]:
    """`each` slots of `chunk` bytes for every one of `threads` threads, from the pinned blocks."""
    return [[Slot(pinned[k * each + s][:chunk]) for s in range(each)] for k in range(threads)]


def self_copy(
    jobs: list[tuple[int, int, int, int]], dest: torch.Tensor, slots: list[list[Slot]]
) -> float:
    """Seconds for every job: each thread reads into its own slots and copies out itself."""
    counter = itertools.count()
    errors: list[BaseException] = []

    def worker(mine: list[Slot]) -> None:
        stream = torch.cuda.Stream()
        try:
            with torch.cuda.stream(stream):
                for turn in itertools.count():
                    j = next(counter)
                    if j >= len(jobs):
                        break
                    fd, off, n, at = jobs[j]
                    slot = mine[turn % len(mine)]
                    slot.event.synchronize()
                    got = 0
                    while got < n:
                        got += os.preadv(fd, [slot.view[got:n]], off + got)
                    dest[at : at + n].copy_(slot.tensor[:n], non_blocking=True)
                    slot.event.record(stream)
            stream.synchronize()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(mine,)) for mine in slots]
    torch.cuda.synchronize()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return seconds


def cache_seconds(paths: list[Path], threads: int, file_bytes: int) -> float:
    return file_bytes / (parallel_read(paths, threads, direct=False) * 1e9)


def check_self_copy(jobs: list[tuple[int, int, int, int]], dest: torch.Tensor) -> None:
    rng = random.Random(0)
    for fd, off, n, at in rng.sample(jobs, 8):
        k = rng.randrange(0, max(1, n - 4096))
        want = os.pread(fd, 4096, off + k)
        got = bytes(dest[at + k : at + k + len(want)].cpu().numpy())
        assert got == want, f"self-copy: bytes differ at destination offset {at + k}"


def streamer_load(
    root: Path, dest: torch.Tensor, threads: int, chunk: int, ring: list[torch.Tensor] | None
) -> float:
    """Seconds for SafetensorsStreamer into views of `dest`, its ring's slots handed over (None:
    its readers pin them, as in a load with nothing pinned ahead)."""
    pool = prepin.SlotPool()
    pool._nbytes = chunk
    pool._ready = [t[:chunk] for t in ring or []]
    saved, prepin._pool = prepin._pool, pool
    offsets: dict[str, int] = {}

    def resolve(meta: TensorMeta) -> torch.Tensor:
        at = offsets[meta.name]
        return dest[at : at + meta.nbytes].view(meta.dtype).view(meta.shape)

    try:
        torch.cuda.synchronize()
        start = time.perf_counter()
        streamer = SafetensorsStreamer(
            LocalSource(root, direct=False),
            "cuda",
            options=StreamOptions(
                threads=threads, chunk_bytes=chunk, slots=len(ring or []) or None
            ),
        )
        at = 0
        for meta in streamer.tensors:
            offsets[meta.name] = at
            at += meta.nbytes
        for _ in streamer.stream(resolve):
            pass
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    finally:
        prepin._pool = saved
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(".bench/llama-3.1-8b-random"))
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[16, 24])
    ap.add_argument("--chunk-mib", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--slots-per-thread", type=int, default=2)
    args = ap.parse_args()

    device = torch.device("cuda")
    total = write_model(args.dir, llama_8b_config(args.layers, args.vocab), args.shards, device)
    paths = weight_paths(args.dir)
    file_bytes = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} shards, {total / 1e9:.2f} GB of weights", flush=True)
    parallel_read(paths, 16, direct=False)  # warm the page cache
    dest = torch.empty(file_bytes, dtype=torch.uint8, device=device)
    # The process's first loads, each ring pinned by its readers (the loader's defaults):
    # what a fresh process pays on top of the steady figures below.
    for k in range(2):
        seconds = streamer_load(args.dir, dest, 16, 32 * MiB, None)
        print(
            f"streamer, load {k + 1} of this process, ring pinned by its readers: "
            f"{seconds:.3f} s ({file_bytes / seconds / 1e9:.2f} GB/s)",
            flush=True,
        )
    biggest = max(args.chunk_mib) * MiB
    most = max(args.threads) * args.slots_per_thread
    t0 = time.perf_counter()
    pinned = [pinned_host(biggest) for _ in range(most)]
    print(f"pinned {most} x {biggest // MiB} MiB in {time.perf_counter() - t0:.2f} s", flush=True)

    fds = {p: os.open(p, os.O_RDONLY) for p in paths}
    per = args.slots_per_thread
    # one self-copy checked byte for byte before anything is timed
    first = jobs_for(fds, args.chunk_mib[0] * MiB)
    self_copy(first, dest, thread_slots(pinned, args.threads[0], per, args.chunk_mib[0] * MiB))
    check_self_copy(first, dest)
    print("self-copy checked against the files", flush=True)

    cases: list[tuple[str, Callable[[], float]]] = []
    for t in args.threads:
        cases.append((f"cache {t}", partial(cache_seconds, paths, t, file_bytes)))
    for t in args.threads:
        for c in args.chunk_mib:
            slots = thread_slots(pinned, t, per, c * MiB)
            cases.append((f"self {t}/{c}", partial(self_copy, jobs_for(fds, c * MiB), dest, slots)))
            ring = pinned[: t + 4] if t + 4 <= most else pinned
            load = partial(streamer_load, args.dir, dest, t, c * MiB, ring)
            cases.append((f"streamer {t}/{c}", load))

    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(args.repeats):
        for name, fn in cases:
            times[name].append(fn())
    print(
        f"\n{'path':<18} {'best s':>7} {'median s':>9} {'best GB/s':>10}   (weights {total / 1e9:.2f} GB, files {file_bytes / 1e9:.2f} GB)"
    )
    for name, ts in times.items():
        print(
            f"{name:<18} {min(ts):7.3f} {statistics.median(ts):9.3f} {file_bytes / min(ts) / 1e9:10.2f}"
        )
    for fd in fds.values():
        os.close(fd)


if __name__ == "__main__":
    main()
