"""Warm the GPU's L2 cache with a weight ahead of its matmul.

At batch 1 a decoder layer's attention (rotary + store, attention, split merge) reads a few MB
in ~10 µs while the HBM sits mostly idle, and the o projection that follows reads its whole
weight (32 MiB for Llama-8B) from HBM at only ~65% of the copy rate (cuBLAS GEMV, H200). The
weight fits in L2 (50 MB on H100/H200), so a kernel on a side stream can pull it into L2 while
attention runs, and the matmul then reads it from there.

Three ways to pull, for measuring (gpu_check --section l2):
- MODE_BULK: `cp.async.bulk.prefetch.L2` (sm_90): one instruction a thread for CHUNK bytes;
  the copy engine fetches, the program exits at once.
- MODE_LINE: `prefetch.global.L2::evict_last`, one instruction a thread per 128-byte line.
- MODE_LOAD: ordinary loads with the evict_last hint, summed into a value that is never stored
  (the program waits for its bytes; the most portable).
Prefetches are hints: nothing here changes a result, only where the bytes come from.
"""

from __future__ import annotations

from functools import cache

import torch

from ember.ops.triton_kv import jit, tl, triton

MODE_BULK = 0
MODE_LINE = 1
MODE_LOAD = 2
MODES = {"bulk": MODE_BULK, "line": MODE_LINE, "load": MODE_LOAD}

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
