"""Triton GEMV for batch-1 decode, with the op before it fused in (layers/small_batch.py, on by
default; EMBER_FUSED_GEMV=0 turns it off).

y = pre(x) @ w.T for one row x, with `pre` one of

- nothing,
- RMSNorm, x / rms(x) * (norm_weight + offset): each program streams x beside its weight
  rows, sums x^2 on the way, and scales its dot products by 1 / rms(x) at the end (RMSNorm's
  factor is one scalar a row), so the norm costs no pass of its own;
- SiLU-and-multiply of x = [gate | up] (rounded as `silu_and_mul_triton` rounds);
- the residual add, then RMSNorm, of a decoder layer (s = x + residual, rounded to x's dtype):
  the first program also writes s to `residual_out` (out of place, as the other programs are
  still reading `residual`).

Each program owns BLOCK_N output features and keeps a float32 accumulator across the K loop,
reduced once at the end (a reduction every tile, as the first version did, ran at 45-86% of HBM).
Each tile's products are first summed over runs of 8 K neighbours, which one thread holds, so the
accumulator is [BLOCK_N, BLOCK_K // 8]: 48 registers a thread instead of 79 for 16 x 512 tiles,
5 programs an SM instead of 3, one Llama-8B layer's projections 114.7 -> 110.8 µs and batch-1
decode 236.0 -> 244.9 tok/s on the H200 (2026-12-04). Before that fold, against cuBLAS on the
H200 (`gpu_check.py --section gemv2`, 2026-12-04, weights rotated past L2, no pre-op): qkv
6144 x 4096 14.3 against 15.9 µs, o 4096 x 4096 11.2 against 12.6 (cuBLAS adds a split-K
reduce), gate_up 56.0 against 56.9, down 30.8 against 31.5.
Under programmatic dependent launch each program loads its first weight tile before `gdc_wait`
(no kernel writes weights), so that load overlaps the kernel ahead's tail: batch-1 decode 229.3-
229.5 -> 231.3-231.4 tok/s on the H200 (2026-12-04, alternating runs in one call).

Two epilogues (2026-12-04, fourteenth session, H200):
- a layer's qkv projection can finish its output itself (QKVRotary): q and k rotated at the
  token's position, and k and v stored at its cache slot, so the layer needs no rotary kernel.
  Each program then owns rotation pairs (d, d + head_dim / 2) of one head (rotary_columns in
  ops/triton_qkv_rotary.py).
  qkv + rotary + KV store: 17.1 -> 16.5 µs a layer;
- float32 output (`out_dtype`) for the LM head's logits, with no cast kernel after: 243.7 µs
  for cuBLAS and the cast against 231.9 for the GEMV.
Together, batch-1 decode 247.7 -> 250.8-250.9 tok/s (alternating runs in one call).
`gpu_check.py --section gemv` checks them against `gemv_reference` (which rounds the norm's
output to x's dtype before the projection, as the unfused layers do: a bf16 difference), the
rotary epilogue against the rotary kernel and eager PyTorch, and the float32 logits against
their own cast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ember.ops.triton_kv import (
    gdc_launch_dependents,
    gdc_wait,
    jit,
    next_power_of_2,
    pdl_enabled,
    pdl_launch,
    tl,
)
from ember.ops.triton_qkv_rotary import QKVRotary, rotary_args, rotary_columns, rotary_epilogue

__all__ = [
    "MAX_ROWS",
    "PRE_ADD_RMSNORM",
    "PRE_NONE",
    "PRE_RMSNORM",
    "PRE_SILU_MUL",
    "gemv_config",
    "gemv_reference",
    "gemv_triton",
]

MAX_ROWS = 1  # rows of x these kernels take; larger batches belong to cuBLAS
PRE_NONE, PRE_RMSNORM, PRE_SILU_MUL, PRE_ADD_RMSNORM = 0, 1, 2, 3


@jit
def _pre_tile(
    x_ptr, norm_ptr, res_ptr, res_out_ptr, ks, k_ok, k_dim, norm_offset, pid, PRE: tl.constexpr
):
    """x's tile at ks after the pre-op, in float32, and its squares for RMSNorm's sum (the
    residual add's program 0 also writes the sum out)."""
    dtype = x_ptr.dtype.element_ty
    if PRE == 2:  # x = [gate | up]: silu(gate) rounded, times up, rounded
        g = tl.load(x_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
        u = tl.load(x_ptr + k_dim + ks, mask=k_ok, other=0.0).to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32)
        xv = (act * u).to(dtype).to(tl.float32)
    elif PRE == 3:
        xs = tl.load(x_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
        rs = tl.load(res_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
        summed = (xs + rs).to(dtype)
        if pid == 0:
            tl.store(res_out_ptr + ks, summed, mask=k_ok)
        xv = summed.to(tl.float32)
    else:
        xv = tl.load(x_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
    squares = xv * xv
    if PRE == 1 or PRE == 3:
        nw = tl.load(norm_ptr + ks, mask=k_ok, other=0.0).to(tl.float32) + norm_offset
        xv = xv * nw
    return xv, squares


@jit
def _w_tile(w_rows, ks, col_ok, k_ok, EVEN: tl.constexpr):
    if EVEN:
        w = tl.load(w_rows + ks[None, :], eviction_policy="evict_first")
    else:
        w_ok = col_ok[:, None] & k_ok[None, :]
        w = tl.load(w_rows + ks[None, :], mask=w_ok, other=0.0, eviction_policy="evict_first")
    return w


@jit
def _fold(prod, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FOLD: tl.constexpr):
    """prod [BLOCK_N, BLOCK_K] with each run of FOLD neighbours along K summed: [BLOCK_N,
    BLOCK_K // FOLD]. A thread holds 8 neighbours of a row (16-byte loads), so FOLD <= 8 adds
    within the thread: no data moves, and the accumulator takes FOLD times fewer registers.
    The reshape keeps the element order (with reordering allowed, rows got mixed on the GPU)."""
    if FOLD == 1:
        return prod
    return tl.sum(tl.reshape(prod, [BLOCK_N, BLOCK_K // FOLD, FOLD]), 2)


@jit
def _accumulate(acc, w, xv, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FOLD: tl.constexpr):
    """acc plus one tile's products: the weight tile w times x's tile xv, folded along K."""
    return acc + _fold(w.to(tl.float32) * xv[None, :], BLOCK_N, BLOCK_K, FOLD)


@jit
def _gemv_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    norm_ptr,
    res_ptr,
    res_out_ptr,
    n_cols,
    k_dim,
    stride_wn,
    eps,
    norm_offset,
    pos_ptr,  # ROTARY only, from here on (see triton_qkv_rotary.rotary_epilogue)
    cos_ptr,
    sin_ptr,
    stride_cache,
    n_q_heads,
    n_kv_heads,
    slot_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_size,
    stride_kc_block,
    stride_kc_slot,
    stride_kc_head,
    stride_vc_block,
    stride_vc_slot,
    stride_vc_head,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN: tl.constexpr,  # n_cols % BLOCK_N == 0 and k_dim % BLOCK_K == 0: no masks
    PRE: tl.constexpr,
    PDL: tl.constexpr,  # launched with programmatic dependent launch (triton_kv.pdl_enabled)
    EARLY: tl.constexpr,  # the first weight tile loaded before waiting on the kernel ahead
    FOLD: tl.constexpr,  # K neighbours summed before accumulating (_fold)
    ROTARY: tl.constexpr,  # a qkv projection with rotary (and the KV store) in the epilogue
    HALF: tl.constexpr,  # ROTARY: head_dim // 2
    STORE_KV: tl.constexpr,  # ROTARY: also store k and v in the cache
    SATURATE: tl.constexpr,  # STORE_KV into an fp8 cache: its largest finite value; else 0.0
):
    pid = tl.program_id(0)
    if ROTARY:
        cols, head, d0 = rotary_columns(pid, BLOCK_N, HALF)
        # The token's position and slot: no kernel writes them, so they are read before the
        # PDL wait; cos and sin follow in the epilogue (held here, they cost 10 registers).
        pos = tl.load(pos_ptr).to(tl.int64)
        slot = pos * 0 - 1
        if STORE_KV:
            slot = tl.load(slot_ptr).to(tl.int64)
    else:
        cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_wn
    acc = tl.zeros([BLOCK_N, BLOCK_K // FOLD], tl.float32)
    sq = tl.zeros([BLOCK_K], tl.float32)
    if EARLY:
        # No kernel writes the weights, so their first tile can stream in while the kernel
        # ahead (whose output x is) still finishes; everything after gdc_wait is ordered.
        ks = tl.arange(0, BLOCK_K)
        k_ok = ks < k_dim
        w = _w_tile(w_rows, ks, col_ok, k_ok, EVEN)
        if PDL:
            gdc_wait()
        xv, squares = _pre_tile(
            x_ptr, norm_ptr, res_ptr, res_out_ptr, ks, k_ok, k_dim, norm_offset, pid, PRE
        )
        sq += squares
        acc = _accumulate(acc, w, xv, BLOCK_N, BLOCK_K, FOLD)
        k_first = BLOCK_K
    else:
        if PDL:
            gdc_wait()
        k_first = 0
    for k0 in range(k_first, k_dim, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < k_dim
        xv, squares = _pre_tile(
            x_ptr, norm_ptr, res_ptr, res_out_ptr, ks, k_ok, k_dim, norm_offset, pid, PRE
        )
        sq += squares
        w = _w_tile(w_rows, ks, col_ok, k_ok, EVEN)
        acc = _accumulate(acc, w, xv, BLOCK_N, BLOCK_K, FOLD)
    if PDL:
        gdc_launch_dependents()
    y = tl.sum(acc, 1)
    if PRE == 1 or PRE == 3:
        y = y * tl.math.rsqrt(tl.sum(sq, 0) / k_dim + eps)
    if ROTARY:  # whole heads: every column is in range
        rotary_epilogue(
            y.to(y_ptr.dtype.element_ty), y_ptr, cols, head, d0, pos, slot, cos_ptr, sin_ptr,
            stride_cache, n_q_heads, n_kv_heads, k_cache_ptr, v_cache_ptr, block_size,
            stride_kc_block, stride_kc_slot, stride_kc_head, stride_vc_block, stride_vc_slot,
            stride_vc_head, BLOCK_N, HALF, STORE_KV, SATURATE,
        )  # fmt: skip
    else:  # rounded to x's dtype, as a projection in the model's dtype rounds (out_dtype)
        y = y.to(x_ptr.dtype.element_ty).to(y_ptr.dtype.element_ty)
        tl.store(y_ptr + cols, y, mask=col_ok)


def gemv_config(pre: int, n_cols: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) for a projection, from the H200 sweeps (2026-12-04,
    `gpu_check.py --section gemv2` and `--section gemv`): with a norm in front, 16 x 512 tiles
    on 8 warps (qkv + norm 15.5 against 17.2 µs for 4 x 1024 on 4, which reread x, the residual
    and the norm's weight for every 4 rows); SiLU-mul in front or o-sized (4096 features),
    8 x 1024 on 4 warps; otherwise 4 x 1024 on 4 warps."""
    if pre in (PRE_RMSNORM, PRE_ADD_RMSNORM):
        return 16, 512, 8
    if pre == PRE_SILU_MUL or n_cols <= 4096:
        return 8, 1024, 4
    return 4, 1024, 4


def gemv_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    pre: int = PRE_NONE,
    norm_weight: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
    eps: float = 1e-6,
    norm_offset: float = 0.0,
    block_n: int | None = None,
    block_k: int | None = None,
    num_warps: int | None = None,
    num_stages: int = 3,
    early: bool = True,
    fold: int = 8,
    rotary: QKVRotary | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """pre(x) @ weight.T for x [1, K] (PRE_SILU_MUL: [1, 2K]) and weight [N, K], both with a
    contiguous last dim; returns [1, N] in x's dtype. PRE_ADD_RMSNORM also takes `residual`
    [1, K] and writes x + residual to `residual_out` [1, K] (another buffer). See the module
    docstring; block_n, block_k and num_warps left None come from gemv_config. `early` loads
    each program's first weight tile before it waits on the kernel ahead (under PDL; off gives
    the same sums, for tests). `rotary`: weight is a qkv projection whose q and k come out
    rotated (and with its cache, k and v stored there), see QKVRotary. `out_dtype`
    (default x's): y is rounded to x's dtype, then stored in it (float32 logits from a bf16
    head, without a cast kernel after)."""
    m_rows = x.shape[0]
    n_cols, k_dim = weight.shape
    if m_rows > MAX_ROWS:
        raise ValueError(f"gemv_triton takes at most {MAX_ROWS} row, got {m_rows}")
    if x.shape[1] != (2 * k_dim if pre == PRE_SILU_MUL else k_dim):
        raise ValueError(f"x {tuple(x.shape)} does not fit weight {tuple(weight.shape)}")
    if pre in (PRE_RMSNORM, PRE_ADD_RMSNORM) and norm_weight is None:
        raise ValueError("RMSNorm needs norm_weight")
    if pre == PRE_ADD_RMSNORM and (residual is None or residual_out is None):
        raise ValueError("PRE_ADD_RMSNORM needs residual and residual_out")
    if residual is not None and residual_out is not None:
        if residual_out.data_ptr() == residual.data_ptr():
            raise ValueError("residual_out must not be residual: other programs still read it")
        if not residual.is_contiguous() or not residual_out.is_contiguous():
            raise ValueError("residual and residual_out must be contiguous")
    if not x.is_contiguous():
        x = x.contiguous()
    if weight.stride(-1) != 1:
        raise ValueError("weight must have a contiguous last dim")
    if rotary is not None and out_dtype not in (None, x.dtype):
        raise ValueError("the rotary epilogue writes q, k and v in x's dtype")
    y = torch.empty((m_rows, n_cols), dtype=out_dtype or x.dtype, device=x.device)
    if m_rows == 0:
        return y
    default_n, default_k, default_warps = gemv_config(pre, n_cols)
    if rotary is not None:  # a program's rotation pairs must lie within one head's halves
        default_n = 2 * math.gcd(default_n // 2, rotary.head_dim // 2)
    pdl = pdl_enabled(x.device)
    block_n = default_n if block_n is None else block_n
    block_k = min(default_k if block_k is None else block_k, next_power_of_2(k_dim))
    num_warps = default_warps if num_warps is None else num_warps
    epilogue_args, epilogue = rotary_args(rotary, n_cols, block_n, x)
    _gemv_kernel[(-(-n_cols // block_n),)](
        x,
        weight,
        y,
        norm_weight if norm_weight is not None else x,
        residual if residual is not None else x,
        residual_out if residual_out is not None else x,
        n_cols,
        k_dim,
        weight.stride(0),
        eps,
        norm_offset,
        *epilogue_args,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        EVEN=n_cols % block_n == 0 and k_dim % block_k == 0,
        PRE=pre,
        PDL=pdl,
        EARLY=early,
        FOLD=min(fold, block_k),
        num_warps=num_warps,
        num_stages=num_stages,
        **epilogue,
        **pdl_launch(pdl),
    )
    return y


def gemv_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    pre: int = PRE_NONE,
    norm_weight: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
    eps: float = 1e-6,
    norm_offset: float = 0.0,
) -> torch.Tensor:
    """What gemv_triton computes, in PyTorch (the pre-op rounded as the Triton kernels round)."""
    if pre == PRE_ADD_RMSNORM:
        assert residual is not None and residual_out is not None
        x = (x.float() + residual.float()).to(x.dtype)
        residual_out.copy_(x)
    if pre in (PRE_RMSNORM, PRE_ADD_RMSNORM):
        assert norm_weight is not None
        xf = x.float()
        normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
        x = (normed.float() * (norm_weight.float() + norm_offset)).to(x.dtype)
    elif pre == PRE_SILU_MUL:
        gate, up = x.float().chunk(2, dim=-1)
        x = (F.silu(gate).to(x.dtype).float() * up).to(x.dtype)
    return F.linear(x, weight)
