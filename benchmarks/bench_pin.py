"""Per-process costs of a load, measured apart: pinning the host ring and allocating parameters.

A fresh process loads the 8B shape at 25-29 GB/s where one that has pinned its ring and warmed
torch's caching allocator reaches ~41 GB/s (docs/benchmarks.md). This times, in one fresh
process on the GPU machine (~20 s):

  - pinning 20 x 16 MiB ring slots with cudaHostAlloc (torch's pin_memory), one thread and four;
  - the same slots as anonymous memory (transparent huge pages asked for, touched by threads),
    then registered with cudaHostRegister, one thread and four;
  - host -> device copy rate out of each kind of slot (both must be real DMA);
  - allocating the Llama-3.1-8B shape's parameters (291 tensors) one cudaMalloc each, against
    one reserved block that torch's caching allocator carves them from;
  - zero-copy from the page cache: a cached file mapped read-only and registered with CUDA in
    64 MiB pieces (1, 4 and 16 threads), then copied to the device straight out of the page
    cache: whether registering runs faster than the ~30-37 GB/s of copying it into pinned memory.

    python benchmarks/bench_pin.py
"""

from __future__ import annotations

import argparse
import mmap
import os
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ember.loader import pinned

MiB = 1 << 20


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def pin_alloc(count: int, nbytes: int, threads: int) -> list[torch.Tensor]:
    def one(_: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


def pin_register(count: int, nbytes: int, threads: int) -> list[torch.Tensor]:
    """The ring's slots as ember pins them (ember/loader/pinned.py)."""
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda _: pinned.pinned_host(nbytes), range(count)))


def h2d_rate(sources: list[torch.Tensor], device: torch.device) -> float:
    dest = torch.empty(sources[0].numel(), dtype=torch.uint8, device=device)
    for s in sources[:2]:
        dest.copy_(s, non_blocking=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(4):
        for s in sources:
            dest.copy_(s, non_blocking=True)
    torch.cuda.synchronize()
    return 4 * sum(s.numel() for s in sources) / (time.perf_counter() - t0) / 1e9


def llama_8b_shapes() -> list[tuple[int, ...]]:
    """The parameters ember builds for Llama-3.1-8B (fused qkv and gate_up)."""
    shapes: list[tuple[int, ...]] = [(128256, 4096)]
    for _ in range(32):
        shapes += [(4096,), (6144, 4096), (4096, 4096), (4096,), (28672, 4096), (4096, 14336)]
    return [*shapes, (4096,), (128256, 4096)]


def allocate_each(shapes: list[tuple[int, ...]], device: torch.device) -> list[torch.Tensor]:
    out = [torch.empty(s, dtype=torch.bfloat16, device=device) for s in shapes]
    torch.cuda.synchronize()
    return out


def allocate_reserved(shapes: list[tuple[int, ...]], device: torch.device) -> list[torch.Tensor]:
    step = 2 * MiB
    total = sum(-(-2 * int(torch.Size(s).numel()) // step) * step for s in shapes)
    block = torch.empty(total + step, dtype=torch.uint8, device=device)
    del block
    return allocate_each(shapes, device)


def register_file(path: str, piece: int, threads: int, device: torch.device) -> None:
    """Map `path` read-only, register it piece by piece on `threads` threads, copy it all to
    the device; print the rates."""
    import numpy as np

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        mapping = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)
    array = np.frombuffer(mapping, dtype=np.uint8)
    base = array.ctypes.data
    cudart = torch.cuda.cudart()
    pieces = [(off, min(piece, size - off)) for off in range(0, size, piece)]

    def reg(p: tuple[int, int]) -> int:
        return int(cudart.cudaHostRegister(base + p[0], p[1], 8))  # cudaHostRegisterReadOnly

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        codes = list(pool.map(reg, pieces))
    reg_s = time.perf_counter() - t0
    if any(codes):
        print(f"  file, {threads} thread(s): cudaHostRegister failed: {sorted(set(codes))}")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a read-only buffer: torch only reads it here
        host = torch.from_numpy(array)
    dest = torch.empty(size, dtype=torch.uint8, device=device)
    t0 = time.perf_counter()
    for off, n in pieces:
        dest[off : off + n].copy_(host[off : off + n], non_blocking=True)
    torch.cuda.synchronize()
    copy_s = time.perf_counter() - t0
    same = bool(torch.equal(dest[:4096].cpu(), host[:4096]))
    for off, _ in pieces:
        cudart.cudaHostUnregister(base + off)
    gb = size / 1e9
    print(
        f"  file {gb:.1f} GB in {piece >> 20} MiB pieces, {threads:>2} thread(s): register "
        f"{reg_s:.3f} s ({gb / reg_s:.1f} GB/s), copy {copy_s:.3f} s ({gb / copy_s:.1f} GB/s), "
        f"both {gb / (reg_s + copy_s):.1f} GB/s; bytes match: {same}"
    )
    del host, array, dest
    mapping.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--slots", type=int, default=20)
    ap.add_argument("--slot-mib", type=int, default=16)
    ap.add_argument("--file-gib", type=int, default=4, help="the zero-copy test's file size")
    args = ap.parse_args()
    device = torch.device("cuda")
    t_init, _ = timed(lambda: torch.empty(1, device=device))
    print(
        f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}; CUDA init {t_init:.3f} s"
    )
    n, size = args.slots, args.slot_mib * MiB
    total_mib = n * args.slot_mib
    print(f"ring: {n} x {args.slot_mib} MiB = {total_mib} MiB")

    for threads in (1, 4):
        s, bufs = timed(partial(pin_alloc, n, size, threads))
        assert isinstance(bufs, list)
        rate = h2d_rate(bufs, device)
        print(
            f"  cudaHostAlloc, {threads} thread(s): {s:.3f} s ({s * 1e3 / total_mib:.2f} ms/MiB); "
            f"H2D out of it {rate:.1f} GB/s"
        )
        del bufs
        host_empty_cache = getattr(torch._C, "_host_emptyCache", None)
        if host_empty_cache is not None:  # else the 4-thread row reuses torch's cached blocks
            host_empty_cache()
    for threads in (1, 4):
        s, regs = timed(partial(pin_register, n, size, threads))
        assert isinstance(regs, list)
        if pinned._warned.is_set():
            print("  huge pages + cudaHostRegister: registering failed, cudaHostAlloc used")
            break
        rate = h2d_rate(regs, device)
        print(
            f"  huge pages + cudaHostRegister, {threads} thread(s): {s:.3f} s "
            f"({s * 1e3 / total_mib:.2f} ms/MiB); H2D out of it {rate:.1f} GB/s"
        )
        del regs  # unregistered as they go

    shapes = llama_8b_shapes()
    gb = sum(2 * torch.Size(s).numel() for s in shapes) / 1e9
    print(f"parameters: {len(shapes)} tensors, {gb:.2f} GB bf16")
    for label, fn in (
        ("one cudaMalloc each", allocate_each),
        ("carved from one reserved block", allocate_reserved),
        ("one cudaMalloc each (again)", allocate_each),
        ("carved from one reserved block (again)", allocate_reserved),
    ):
        torch.cuda.synchronize()
        s, params = timed(partial(fn, shapes, device))
        print(f"  {label}: {s:.3f} s")
        del params
        torch.cuda.empty_cache()

    path = "/tmp/ember-bench-pin.bin"
    with open(path, "wb") as f:  # written now, so in the page cache
        chunk = os.urandom(64 * MiB)
        for _ in range(args.file_gib * 16):
            f.write(chunk)
    print("zero-copy from the page cache (file mapped read-only, registered, copied):")
    try:
        for threads in (1, 4, 16):
            register_file(path, 64 * MiB, threads, device)
    finally:
        os.unlink(path)


if __name__ == "__main__":
    main()
