"""Triton GEMV for small-batch decode (M <= 4 rows), with the op before it fused in: an
experiment, slower than cuBLAS so far and used only behind EMBER_FUSED_GEMV=1
(layers/small_batch.py).

At batch 1 the H200 decode graph of the Llama-3.1-8B shape ran 4.85 ms against 3.77 ms for
reading the weights once at the measured HBM bandwidth. About 320 kernels run per step (ten a
layer), so part of the gap is each kernel's ramp-up and tail, part the GEMVs' own efficiency.
These kernels take both on: y = pre(x) @ w.T with `pre` one of

- nothing,
- RMSNorm (x / rms(x) * (norm_weight + offset), rounded as `rms_norm_triton` rounds), so the
  norm before the qkv and gate/up projections needs no kernel of its own,
- SiLU-and-multiply of x = [gate | up] (rounded as `silu_and_mul_triton`), so the down
  projection takes the gate/up output directly,
- the residual add, then RMSNorm, of a decoder layer (s = x + residual): the first program
  also writes s to `residual_out` (out of place, as the other programs are still reading
  `residual`), so a layer's norms need no kernels at all,

each program computing `pre` for its own use (x is a few KiB, read from L2) and BLOCK_N rows of
y. scripts/gpu_check.py --section gemv checks them against `gemv_reference` and times them next
to cuBLAS. On the H200 the best block shapes (n8 k1024, 4 warps, 4 stages) came within 1-14%
of today's pre-op kernel + cuBLAS per projection, the default (n16 k512) 21-43% slower, and
the 4-row case far slower: the product tile M x BLOCK_N x BLOCK_K is too big for registers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.ops.triton_kv import jit, next_power_of_2, tl

__all__ = [
    "MAX_ROWS",
    "PRE_ADD_RMSNORM",
    "PRE_NONE",
    "PRE_RMSNORM",
    "PRE_SILU_MUL",
    "gemv_reference",
    "gemv_triton",
]

MAX_ROWS = 4  # rows of x these kernels take; larger batches belong to cuBLAS
PRE_NONE, PRE_RMSNORM, PRE_SILU_MUL, PRE_ADD_RMSNORM = 0, 1, 2, 3


@jit
def _gemv_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    norm_ptr,
    res_ptr,
    res_out_ptr,
    m_rows,
    n_cols,
    k_dim,
    stride_xm,
    stride_wn,
    stride_ym,
    stride_rm,
    stride_rom,
    eps,
    norm_offset,
    M_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRE: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    rows = tl.arange(0, M_PAD)
    row_ok = rows < m_rows
    dtype = x_ptr.dtype.element_ty
    if PRE == 1 or PRE == 3:  # RMSNorm: the sum of squares of each row first
        sq = tl.zeros([M_PAD], tl.float32)
        for k0 in range(0, k_dim, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            x_mask = row_ok[:, None] & (ks < k_dim)[None, :]
            xv = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :], mask=x_mask, other=0.0)
            if PRE == 3:
                r_at = res_ptr + rows[:, None] * stride_rm + ks[None, :]
                rv = tl.load(r_at, mask=x_mask, other=0.0)
                xv = (xv.to(tl.float32) + rv.to(tl.float32)).to(dtype)
                if pid == 0:
                    tl.store(res_out_ptr + rows[:, None] * stride_rom + ks[None, :], xv, x_mask)
            xv = xv.to(tl.float32)
            sq += tl.sum(xv * xv, 1)
        rstd = tl.math.rsqrt(sq / k_dim + eps)
    acc = tl.zeros([M_PAD, BLOCK_N], tl.float32)
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_wn
    for k0 in range(0, k_dim, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < k_dim
        x_mask = row_ok[:, None] & k_ok[None, :]
        x_at = x_ptr + rows[:, None] * stride_xm + ks[None, :]
        if PRE == 2:  # x = [gate | up]: silu(gate) rounded, times up, rounded
            g = tl.load(x_at, mask=x_mask, other=0.0).to(tl.float32)
            u = tl.load(x_at + k_dim, mask=x_mask, other=0.0).to(tl.float32)
            act = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32)
            xv = (act * u).to(dtype).to(tl.float32)
        elif PRE == 3:
            xv = tl.load(x_at, mask=x_mask, other=0.0).to(tl.float32)
            rv = tl.load(res_ptr + rows[:, None] * stride_rm + ks[None, :], mask=x_mask, other=0.0)
            xv = (xv + rv.to(tl.float32)).to(dtype).to(tl.float32)
        else:
            xv = tl.load(x_at, mask=x_mask, other=0.0).to(tl.float32)
        if PRE == 1 or PRE == 3:
            nw = tl.load(norm_ptr + ks, mask=k_ok, other=0.0).to(tl.float32) + norm_offset
            xv = (xv * rstd[:, None]).to(dtype).to(tl.float32)
            xv = (xv * nw[None, :]).to(dtype).to(tl.float32)
        w = tl.load(w_rows + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc += tl.sum(xv[:, None, :] * w.to(tl.float32)[None, :, :], 2)
    tl.store(
        y_ptr + rows[:, None] * stride_ym + cols[None, :],
        acc.to(y_ptr.dtype.element_ty),
        mask=row_ok[:, None] & col_ok[None, :],
    )


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
    block_n: int = 16,
    block_k: int = 512,
    num_warps: int = 4,
    num_stages: int = 3,
) -> torch.Tensor:
    """pre(x) @ weight.T for x [M <= 4, K] (PRE_SILU_MUL: [M, 2K]) and weight [N, K], both
    with a contiguous last dim; returns [M, N] in x's dtype. PRE_ADD_RMSNORM also takes
    `residual` [M, K] and writes x + residual to `residual_out` [M, K] (another buffer).
    See the module docstring."""
    m_rows = x.shape[0]
    n_cols, k_dim = weight.shape
    if m_rows > MAX_ROWS:
        raise ValueError(f"gemv_triton takes at most {MAX_ROWS} rows, got {m_rows}")
    if x.shape[1] != (2 * k_dim if pre == PRE_SILU_MUL else k_dim):
        raise ValueError(f"x {tuple(x.shape)} does not fit weight {tuple(weight.shape)}")
    if pre in (PRE_RMSNORM, PRE_ADD_RMSNORM) and norm_weight is None:
        raise ValueError("RMSNorm needs norm_weight")
    if pre == PRE_ADD_RMSNORM and (residual is None or residual_out is None):
        raise ValueError("PRE_ADD_RMSNORM needs residual and residual_out")
    if residual is not None and residual_out is not None:
        if residual_out.data_ptr() == residual.data_ptr():
            raise ValueError("residual_out must not be residual: other programs still read it")
        if residual.stride(-1) != 1 or residual_out.stride(-1) != 1:
            raise ValueError("residual and residual_out need a contiguous last dim")
    if x.stride(-1) != 1:
        x = x.contiguous()
    if weight.stride(-1) != 1:
        raise ValueError("weight must have a contiguous last dim")
    y = torch.empty((m_rows, n_cols), dtype=x.dtype, device=x.device)
    if m_rows == 0:
        return y
    m_pad = next_power_of_2(m_rows)
    _gemv_kernel[(-(-n_cols // block_n),)](
        x,
        weight,
        y,
        norm_weight if norm_weight is not None else x,
        residual if residual is not None else x,
        residual_out if residual_out is not None else x,
        m_rows,
        n_cols,
        k_dim,
        x.stride(0),
        weight.stride(0),
        y.stride(0),
        residual.stride(0) if residual is not None else 0,
        residual_out.stride(0) if residual_out is not None else 0,
        eps,
        norm_offset,
        M_PAD=m_pad,
        BLOCK_N=block_n,
        # The product tile is M_PAD x BLOCK_N x BLOCK_K in registers: fewer K per extra row.
        BLOCK_K=max(16, min(block_k // m_pad, next_power_of_2(k_dim))),
        PRE=pre,
        num_warps=num_warps,
        num_stages=num_stages,
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
