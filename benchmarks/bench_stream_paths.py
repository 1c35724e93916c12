"""Ways to move a warm safetensors checkpoint into GPU memory, side by side in one process.

The loader's streaming (SafetensorsStreamer: reader threads fill a pinned ring, the main thread
enqueues every chunk's copies) stayed at 26-31 GB/s on machines whose page cache gave 36 GB/s to
16 reader threads. This times, alternating, on the same warm files and into one preallocated GPU
buffer, with the ring's slots pinned once up front so that pinning is not in any figure:

- cache T:        the page cache -> host memory alone, T threads with a 16 MiB buffer each (the
                  limit for anything that copies through host memory);
- self T/C:       T threads, each with its own pinned slots, each reading a chunk of C MiB and
                  enqueueing its copy itself on its own CUDA stream (no hand-off to another thread);
- self T/C by S:  the same, each S MiB of a chunk copied as soon as it is read (--sub-mib);
- streamer T/C xN: ember's SafetensorsStreamer as the loader runs it (the GIL switch interval
                  load_model sets), N of the same slots handed to its ring through prepin's pool
                  (--streamer-slots; default T + 4);
- zero-copy T/C:  no ring: T threads each register the next C MiB of the mapped files with CUDA
                  (read-only) and copy it to the GPU straight out of the page cache on their own
                  stream; the registrations are undone after the clock (timed apart);
- registered T/C: the same pieces all registered first, then copied: the two halves timed apart;
- hybrid T+Z/C:   T self-copying ring threads and Z zero-copy threads at once, taking C MiB
                  chunks from one counter (--hybrid 16+2/32): CPU copies and page registration
                  are different limits, so the two paths may add up.

On the H200 machines of 2026-12-04 (seventeenth session in docs/benchmarks.md): registering
overlapped the copies only in part (zero-copy 33-35 GB/s where the ring's paths gave 38), and
self-copying threads with 8 MiB chunks (a ring small enough for the CPU's 300 MiB L3) reached the
page cache's own rate (46-51 GB/s) where 32 MiB chunks gave 38-41 and the streamer 38-43.

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
from concurrent.futures import ThreadPoolExecutor
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
from ember.models.loader import _prompt_gil_handoff

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


def run_threads(work: list[Callable[[], None]]) -> None:
    """Each callable on a thread of its own, all started, then all joined."""
    threads = [threading.Thread(target=fn) for fn in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def self_copy(
    jobs: list[tuple[int, int, int, int]],
    dest: torch.Tensor,
    slots: list[list[Slot]],
    sub: int = 0,
) -> float:
    """Seconds for every job: each thread reads into its own slots and copies out itself, a
    chunk at a time or, with `sub`, each `sub` bytes as soon as they are read (so the copy
    engine reads them while they may still be in the CPU's last-level cache)."""
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
                    step = sub or n
                    for lo in range(0, n, step):
                        hi = min(n, lo + step)
                        got = lo
                        while got < hi:
                            got += os.preadv(fd, [slot.view[got:hi]], off + got)
                        dest[at + lo : at + hi].copy_(slot.tensor[lo:hi], non_blocking=True)
                    slot.event.record(stream)
            stream.synchronize()
        except BaseException as e:
            errors.append(e)

    torch.cuda.synchronize()
    start = time.perf_counter()
    run_threads([partial(worker, mine) for mine in slots])
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return seconds


class Mapped:
    """The warm files (already open: `fds`) mapped read-only, one piece per job, registered and
    undone on demand."""

    def __init__(self, fds: dict[Path, int]) -> None:
        import mmap

        import numpy as np

        self.maps: list[mmap.mmap] = []
        self.base: dict[int, int] = {}  # fd -> the mapping's address
        for fd in fds.values():
            size = os.fstat(fd).st_size
            mapping = mmap.mmap(fd, size, prot=mmap.PROT_READ)
            self.maps.append(mapping)
            self.base[fd] = int(np.frombuffer(mapping, dtype=np.uint8).ctypes.data)
        self.cudart = torch.cuda.cudart()

    def register(self, fd: int, off: int, n: int) -> int:
        ptr = self.base[fd] + off
        rc = int(self.cudart.cudaHostRegister(ptr, -(-n // 4096) * 4096, 8))  # read-only
        if rc:
            raise RuntimeError(f"cudaHostRegister returned {rc}")
        return ptr

    def unregister(self, ptrs: list[int], threads: int) -> float:
        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(self.cudart.cudaHostUnregister, ptrs))
        return time.perf_counter() - start


def host_view(ptr: int, n: int) -> torch.Tensor:
    """n bytes at address ptr (registered read-only memory; only ever copied from)."""
    import ctypes

    import numpy as np

    array = np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(ptr))
    return torch.from_numpy(array)


def zero_copy(
    mapped: Mapped,
    jobs: list[tuple[int, int, int, int]],
    dest: torch.Tensor,
    threads: int,
    ahead: bool,
    undo: dict[str, list[float]],
    name: str,
) -> float:
    """Seconds until every job's bytes are on the GPU, copied straight out of the page cache.
    ahead: register every piece first (its time and the copies' apart in `undo`)."""
    counter = itertools.count()
    errors: list[BaseException] = []
    ptrs: list[int | None] = [None] * len(jobs)

    def registrar() -> None:
        try:
            while (j := next(counter)) < len(jobs):
                fd, off, n, _ = jobs[j]
                ptrs[j] = mapped.register(fd, off, n)
        except BaseException as e:
            errors.append(e)

    def worker() -> None:
        stream = torch.cuda.Stream()
        try:
            with torch.cuda.stream(stream):
                while (j := next(counter)) < len(jobs):
                    fd, off, n, at = jobs[j]
                    ptr = ptrs[j] if ahead else mapped.register(fd, off, n)
                    ptrs[j] = ptr
                    assert ptr is not None
                    dest[at : at + n].copy_(host_view(ptr, n), non_blocking=True)
            stream.synchronize()
        except BaseException as e:
            errors.append(e)

    torch.cuda.synchronize()
    start = time.perf_counter()
    if ahead:
        run_threads([registrar] * threads)
        registered = time.perf_counter()
        undo.setdefault(f"{name} register", []).append(registered - start)
        counter = itertools.count()
    run_threads([worker] * threads)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if ahead:
        undo.setdefault(f"{name} copy", []).append(time.perf_counter() - registered)
    undo.setdefault(f"{name} unregister", []).append(
        mapped.unregister([p for p in ptrs if p is not None], threads)
    )
    if errors:
        raise errors[0]
    return seconds


def hybrid(
    mapped: Mapped,
    jobs: list[tuple[int, int, int, int]],
    dest: torch.Tensor,
    slots: list[list[Slot]],
    zero_threads: int,
    undo: dict[str, list[float]],
    name: str,
    behind: bool = False,
) -> float:
    """Seconds for every job, taken in order from one counter by two kinds of threads at once:
    one per `slots` entry reading into its own pinned slots and copying out itself (the ring),
    and `zero_threads` registering their chunk of the mapped files and copying it straight out
    of the page cache. The ring's threads are bound by the CPU copying out of the page cache,
    the zero-copy ones by registering pages: the two may add up. Registrations are undone after
    the clock (timed apart in `undo`), or with `behind` by each zero-copy thread itself inside
    the clock, once the copy out of its previous chunk is done (as a loader would have to)."""
    counter = itertools.count()
    errors: list[BaseException] = []
    ptrs: list[int] = []
    taken = {"ring": 0, "zero": 0}
    lock = threading.Lock()

    def ring_worker(mine: list[Slot]) -> None:
        stream = torch.cuda.Stream()
        try:
            with torch.cuda.stream(stream):
                for turn in itertools.count():
                    if (j := next(counter)) >= len(jobs):
                        break
                    fd, off, n, at = jobs[j]
                    slot = mine[turn % len(mine)]
                    slot.event.synchronize()
                    got = 0
                    while got < n:
                        got += os.preadv(fd, [slot.view[got:n]], off + got)
                    dest[at : at + n].copy_(slot.tensor[:n], non_blocking=True)
                    slot.event.record(stream)
                    with lock:
                        taken["ring"] += n
            stream.synchronize()
        except BaseException as e:
            errors.append(e)

    def zero_worker() -> None:
        stream = torch.cuda.Stream()
        last: tuple[int, torch.cuda.Event] | None = None
        try:
            with torch.cuda.stream(stream):
                while (j := next(counter)) < len(jobs):
                    fd, off, n, at = jobs[j]
                    ptr = mapped.register(fd, off, n)
                    dest[at : at + n].copy_(host_view(ptr, n), non_blocking=True)
                    if behind:
                        if last is not None:
                            last[1].synchronize()
                            mapped.cudart.cudaHostUnregister(last[0])
                        event = torch.cuda.Event()
                        event.record(stream)
                        last = (ptr, event)
                    with lock:
                        if not behind:
                            ptrs.append(ptr)
                        taken["zero"] += n
            stream.synchronize()
            if last is not None:
                mapped.cudart.cudaHostUnregister(last[0])
        except BaseException as e:
            errors.append(e)

    torch.cuda.synchronize()
    start = time.perf_counter()
    run_threads([partial(ring_worker, mine) for mine in slots] + [zero_worker] * zero_threads)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    total = taken["ring"] + taken["zero"]
    undo.setdefault(f"{name} zero-copy share", []).append(taken["zero"] / max(1, total))
    undo.setdefault(f"{name} unregister", []).append(mapped.unregister(ptrs, 4))
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
        with _prompt_gil_handoff():  # the GIL handed on as promptly as in load_model
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
    ap.add_argument("--threads", type=int, nargs="+", default=[16])
    ap.add_argument("--chunk-mib", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--slots-per-thread", type=int, default=2)
    ap.add_argument("--zero-copy-mib", type=int, nargs="*", default=[32, 64])
    ap.add_argument("--zero-copy-threads", type=int, nargs="*", default=[8, 16])
    ap.add_argument("--skip-ring", action="store_true", help="only cache and zero-copy paths")
    ap.add_argument(
        "--hybrid",
        nargs="*",
        default=[],
        help="hybrid rows T+Z/C: T ring threads and Z zero-copy threads sharing C MiB chunks "
        "(T+Z/Cu: each zero-copy thread undoes its registrations behind itself, in the clock)",
    )
    ap.add_argument(
        "--streamer-slots",
        type=int,
        nargs="*",
        default=[],
        help="ring slots for the streamer rows (default: threads + 4; at most threads x slots-per-thread)",
    )
    ap.add_argument(
        "--sub-mib",
        type=float,
        nargs="*",
        default=[],
        help="self paths that copy each SUB MiB as soon as it is read (fractions allowed)",
    )
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
    for k in range(0 if args.skip_ring else 2):
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
    if args.sub_mib:
        dest.zero_()
        split = int(min(args.sub_mib) * MiB)
        slots = thread_slots(pinned, args.threads[0], per, args.chunk_mib[0] * MiB)
        self_copy(first, dest, slots, split)
        check_self_copy(first, dest)
    print("self-copy checked against the files", flush=True)

    mapped = Mapped(fds)
    undo: dict[str, list[float]] = {}
    zc_jobs = jobs_for(fds, args.zero_copy_mib[0] * MiB) if args.zero_copy_mib else []
    if zc_jobs:  # checked byte for byte before anything is timed
        dest.zero_()
        zero_copy(mapped, zc_jobs, dest, 16, False, {}, "check")
        check_self_copy(zc_jobs, dest)
        print("zero-copy checked against the files", flush=True)

    cases: list[tuple[str, Callable[[], float]]] = []
    for t in args.threads:
        cases.append((f"cache {t}", partial(cache_seconds, paths, t, file_bytes)))
    for t in args.zero_copy_threads:
        for c in args.zero_copy_mib:
            jobs = jobs_for(fds, c * MiB)
            for ahead, label in ((False, "zero-copy"), (True, "registered")):
                name = f"{label} {t}/{c}"
                cases.append((name, partial(zero_copy, mapped, jobs, dest, t, ahead, undo, name)))
    for t in [] if args.skip_ring else args.threads:
        for c in args.chunk_mib:
            slots = thread_slots(pinned, t, per, c * MiB)
            cases.append((f"self {t}/{c}", partial(self_copy, jobs_for(fds, c * MiB), dest, slots)))
            for sub in [m for m in args.sub_mib if m < c]:
                work = partial(self_copy, jobs_for(fds, c * MiB), dest, slots, int(sub * MiB))
                cases.append((f"self {t}/{c} by {sub:g}", work))
            for n in args.streamer_slots or [t + 4]:
                ring = pinned[:n]
                load = partial(streamer_load, args.dir, dest, t, c * MiB, ring)
                cases.append((f"streamer {t}/{c} x{len(ring)}", load))

    for spec in args.hybrid:
        ring_threads, rest = spec.split("+")
        zero, mib = (int(x) for x in rest.rstrip("u").split("/"))
        chunk = int(mib) * MiB
        slots = thread_slots(pinned, int(ring_threads), per, chunk)
        name = f"hybrid {spec}"
        behind = spec.endswith("u")
        jobs = jobs_for(fds, chunk)
        work = partial(hybrid, mapped, jobs, dest, slots, zero, undo, name, behind)
        cases.append((name, work))
        if spec == args.hybrid[0]:  # checked byte for byte before anything is timed
            dest.zero_()
            work()
            check_self_copy(jobs_for(fds, chunk), dest)
            print(f"{name} checked against the files", flush=True)

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
    for name, ts in undo.items():
        unit = "" if name.endswith("share") else " s"
        print(f"  {name:<28} {min(ts):7.3f} {statistics.median(ts):9.3f}{unit}")
    for fd in fds.values():
        os.close(fd)


if __name__ == "__main__":
    main()
