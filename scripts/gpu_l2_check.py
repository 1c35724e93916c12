"""gpu_check --section l2: does pulling a projection's weight into L2 beside attention pay?

At batch 1 a layer's attention kernels read a few MB in ~10 us while the HBM sits mostly idle;
the o projection after them reads its whole weight (32 MiB for Llama-8B) at ~65% of the copy
rate. The question: would a kernel on a side stream that pulls the weight into L2 (50 MB on the
H200) during attention make the matmul faster? Three ways to pull:
- bulk: `cp.async.bulk.prefetch.L2` (sm_90), one instruction a thread for CHUNK bytes;
- line: `prefetch.global.L2::evict_last`, one instruction a thread per 128-byte line;
- load: ordinary loads with the evict_last hint, summed into a value never stored.

For the o projection (4096 x 4096 bf16) and qkv (6144 x 4096): L2 is flushed (a 512 MB read),
the prefetch runs on a side stream while the main stream idles for a fixed time
(torch.cuda._sleep standing in for attention), then the matmul runs. Printed per variant: the
matmul's us alone, the whole chain's (idle + join + matmul), and the matmul's read rate. `none`
is today's path; `hot` runs the matmul right after the same matmul.

H200, 2026-12-03 (docs/benchmarks.md): even an L2-hot weight takes cuBLAS 12.0 us for o (14.6
cold), so the GEMV is not bound by HBM there; the engine's batch 1 with the o weight prefetched
beside attention was 212.2 tok/s (bulk) and 199.8 (line) against 212.5 without, and the engine
hook was removed. This section stays to measure the question again.
"""

from __future__ import annotations

import argparse
import statistics
from functools import cache

import torch
import torch.nn.functional as F

from ember.ops.triton_kv import jit, tl, triton

MODE_BULK = 0
MODE_LINE = 1
MODE_LOAD = 2

_LINE = 128  # bytes in an L2 cache line


@jit
def _l2_prefetch_kernel(
    base,  # uint8 view of the tensor
    num_chunks,
    sink,  # int32 [1]: written only if an impossible sum turns up, so loads are not dropped
    CHUNK: tl.constexpr,  # bytes per thread and instruction (MODE_BULK, MODE_LOAD)
    BLOCK: tl.constexpr,  # chunks per program
    MODE: tl.constexpr,
):
    chunk = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    # Out-of-range chunks fetch chunk 0 again rather than reading past the tensor.
    chunk = tl.where(chunk < num_chunks, chunk, 0).to(tl.int64)
    if MODE == 0:
        at = base + chunk * CHUNK
        size = tl.full([BLOCK], CHUNK, tl.int32)
        tl.inline_asm_elementwise(
            "cp.async.bulk.prefetch.L2.global [$1], $2; mov.b32 $0, 0;",
            "=r,l,r",
            [at, size],
            dtype=tl.int32,
            is_pure=False,
            pack=1,
        )
    elif MODE == 1:
        at = base + chunk * 128
        tl.inline_asm_elementwise(
            "prefetch.global.L2::evict_last [$1]; mov.b32 $0, 0;",
            "=r,l",
            [at],
            dtype=tl.int32,
            is_pure=False,
            pack=1,
        )
    else:
        words = base.to(tl.pointer_type(tl.int32))
        offs = chunk[:, None] * (CHUNK // 4) + tl.arange(0, CHUNK // 4)[None, :]
        x = tl.load(words + offs, eviction_policy="evict_last")
        total = tl.sum(tl.sum(x ^ (x >> 7), axis=1), axis=0)
        # 0x7FFFFFFF is reachable only by chance; the store keeps the loads alive.
        if total == 0x7FFFFFFF:
            tl.store(sink, total)


@cache
def _sink(device: torch.device) -> torch.Tensor:
    return torch.zeros(1, dtype=torch.int32, device=device)


def l2_prefetch(
    t: torch.Tensor, mode: int = MODE_BULK, chunk: int = 4096, block: int = 128
) -> None:
    """Ask the GPU to bring `t`'s bytes (contiguous) into L2, on the current stream.

    Only whole chunks are fetched (a tail shorter than `chunk` is left); MODE_LINE fetches every
    128-byte line. `chunk` is a power of two >= 16 bytes.
    """
    if triton is None or not t.is_cuda:
        raise RuntimeError("l2_prefetch needs Triton and a CUDA tensor")
    if not t.is_contiguous():
        raise ValueError("l2_prefetch needs a contiguous tensor")
    data = t.view(-1).view(torch.uint8)
    step = _LINE if mode == MODE_LINE else chunk
    num_chunks = data.numel() // step
    if num_chunks == 0:
        return
    grid = (triton.cdiv(num_chunks, block),)
    # Only the loads need a sink; the prefetches never store (their branch is compiled out).
    sink = _sink(t.device) if mode == MODE_LOAD else data
    _l2_prefetch_kernel[grid](
        data, num_chunks, sink, CHUNK=chunk, BLOCK=block, MODE=mode, num_warps=4
    )


# name -> (mode, chunk bytes, chunks a program), or None: no prefetch
VARIANTS: dict[str, tuple[int, int, int] | None] = {
    "none": None,
    "bulk 4K": (MODE_BULK, 4096, 128),
    "bulk 16K": (MODE_BULK, 16384, 32),
    "bulk 64K": (MODE_BULK, 65536, 8),
    "line": (MODE_LINE, 128, 128),
    "load 4K": (MODE_LOAD, 4096, 4),
}
IDLE_US = (0, 8, 12, 100)
REPS = 15


def _cycles_per_us() -> float:
    torch.cuda._sleep(1000)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(1_000_000)
    end.record()
    end.synchronize()
    return 1_000_000 / (start.elapsed_time(end) * 1000)


def _run(
    w: torch.Tensor,
    x: torch.Tensor,
    flush: torch.Tensor,
    side: torch.cuda.Stream,
    variant: tuple[int, int, int] | str | None,
    idle_cycles: int,
) -> tuple[float, float]:
    """Median (matmul µs, chain µs) over REPS flushed runs."""
    main = torch.cuda.current_stream()
    mm, chain = [], []
    for _ in range(REPS):
        flush.sum()
        events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        events[0].record()
        if variant == "hot":
            F.linear(x, w)
        elif variant is not None:
            assert not isinstance(variant, str)
            side.wait_stream(main)
            with torch.cuda.stream(side):
                l2_prefetch(w, variant[0], chunk=variant[1], block=variant[2])
        if idle_cycles:
            torch.cuda._sleep(idle_cycles)
        main.wait_stream(side)
        events[1].record()
        F.linear(x, w)
        events[2].record()
        events[2].synchronize()
        mm.append(events[1].elapsed_time(events[2]) * 1000)
        chain.append(events[0].elapsed_time(events[2]) * 1000)
    return statistics.median(mm), statistics.median(chain)


def section_l2(args: argparse.Namespace) -> bool:
    torch.manual_seed(0)
    flush = torch.ones(512 << 20, dtype=torch.uint8, device="cuda")
    x = torch.randn(1, 4096, dtype=torch.bfloat16, device="cuda")
    weights = {
        "o 4096x4096": torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda"),
        "qkv 6144x4096": torch.randn(6144, 4096, dtype=torch.bfloat16, device="cuda"),
    }
    side = torch.cuda.Stream()
    per_us = _cycles_per_us()
    print(f"clock for torch.cuda._sleep: {per_us:.0f} cycles/us")
    print(
        f"{'weight':<14} {'idle us':>7} {'variant':<9} {'matmul us':>9} {'chain us':>8} {'GB/s':>7}"
    )
    for name, w in weights.items():
        mb = w.numel() * w.element_size() / 1e6
        for idle in IDLE_US:
            variants: list[tuple[str, tuple[int, int, int] | str | None]] = list(VARIANTS.items())
            if idle == 0:
                variants.append(("hot", "hot"))
            for label, variant in variants:
                mm, chain = _run(w, x, flush, side, variant, int(idle * per_us))
                print(
                    f"{name:<14} {idle:>7} {label:<9} {mm:>9.1f} {chain:>8.1f} {mb / mm * 1e3:>7.0f}",
                    flush=True,
                )
    return True
