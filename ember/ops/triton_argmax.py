"""Greedy sampling's argmax over a step's logits, in one Triton launch.

torch's argmax reduces a 128,256-wide row in ~30 µs on the H200, most of it latency: too few
programs share the row. Here each row is cut into BLOCK-wide parts, one program a part (a batch-1
row of Llama 3's vocabulary: 126 programs, one wave), each finds its part's maximum and that
maximum's first index, and counts itself in on the row's counter; the last part to arrive
reduces the parts' results. Ties go to the lowest index and a NaN counts as the largest value,
as torch's argmax has them, so the tokens equal torch's. `argmax_into` picks this kernel on CUDA
and torch's argmax elsewhere.
"""

from __future__ import annotations

import torch

from ember.ops import use_triton
from ember.ops.triton_kv import (
    arrival_counts,
    gdc_launch_dependents,
    gdc_wait,
    jit,
    last_to_arrive,
    next_power_of_2,
    pdl_enabled,
    pdl_launch,
    tl,
)

__all__ = ["argmax_into", "argmax_triton"]

BLOCK = 1024  # logits a program


@jit
def _argmax_kernel(
    x_ptr,
    out_ptr,
    part_val_ptr,
    part_idx_ptr,
    arrivals_ptr,
    n_cols,
    stride_row,
    BLOCK: tl.constexpr,
    PARTS: tl.constexpr,  # next power of two >= the parts of a row
    PDL: tl.constexpr,
):
    row = tl.program_id(0)
    part = tl.program_id(1)
    parts = tl.num_programs(1)
    cols = part * BLOCK + tl.arange(0, BLOCK)
    if PDL:
        gdc_wait()
        gdc_launch_dependents()  # a short kernel: the next one may be scheduled now
    x = tl.load(x_ptr + row.to(tl.int64) * stride_row + cols, mask=cols < n_cols, other=0.0)
    x = x.to(tl.float32)
    x = tl.where(cols < n_cols, x, float("-inf"))
    x = tl.where(x != x, float("inf"), x)  # NaN: as torch, the largest
    best = tl.max(x, 0)
    first = tl.min(tl.where(x == best, cols, n_cols), 0)
    at = row * parts + part
    tl.store(part_val_ptr + at, best)
    tl.store(part_idx_ptr + at, first)
    if last_to_arrive(arrivals_ptr + row, parts):  # the last part of the row: reduce the parts
        ps = tl.arange(0, PARTS)
        ok = ps < parts
        vals = tl.load(
            part_val_ptr + row * parts + ps, mask=ok, other=float("-inf"), cache_modifier=".cg"
        )
        idx = tl.load(part_idx_ptr + row * parts + ps, mask=ok, other=n_cols, cache_modifier=".cg")
        top = tl.max(vals, 0)
        tl.store(out_ptr + row, tl.min(tl.where(ok & (vals == top), idx, n_cols), 0).to(tl.int64))


def argmax_triton(logits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[r] = logits[r].argmax() for logits [R, V] (contiguous last dim) on CUDA; out is an
    int64 [R] tensor. One launch of R x ceil(V / BLOCK) programs. Returns out."""
    rows, n_cols = logits.shape
    if out.shape != (rows,) or out.dtype != torch.int64:
        raise ValueError(
            f"out must be int64 of shape ({rows},), got {out.dtype} {tuple(out.shape)}"
        )
    if rows == 0:
        return out
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    parts = -(-n_cols // BLOCK)
    part_val = torch.empty(rows * parts, dtype=torch.float32, device=logits.device)
    part_idx = torch.empty(rows * parts, dtype=torch.int32, device=logits.device)
    pdl = pdl_enabled(logits.device)
    _argmax_kernel[(rows, parts)](
        logits,
        out,
        part_val,
        part_idx,
        arrival_counts(logits.device, "argmax", rows),
        n_cols,
        logits.stride(0),
        BLOCK=BLOCK,
        PARTS=next_power_of_2(parts),
        PDL=pdl,
        num_warps=4,
        **pdl_launch(pdl),
    )
    return out


def argmax_into(logits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Each row's argmax of logits [R, V] written to out (int64 [R]): the Triton kernel on CUDA
    where the Triton backend is in use, torch's argmax elsewhere. Returns out."""
    if use_triton(logits.device):
        return argmax_triton(logits, out)
    return torch.argmax(logits, dim=-1, out=out)
