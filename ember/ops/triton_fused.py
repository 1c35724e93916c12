"""Triton kernels that fold the small per-layer ops into one launch each: RMSNorm (with the
residual add), rotary embedding (q and k in place, and with a KVStore the cache write of k and v
too), and SiLU-and-mul.

Decode at small batch is launch- and latency-bound: in eager PyTorch these ops are ~30 tiny
kernels per layer; here they are 4. Each matches the PyTorch layer it replaces (ember/layers)
to within one rounding of the activation dtype: the math is done in float32 and rounded where
the reference rounds.
"""

from __future__ import annotations

import torch

from ember.layers.metadata import KVStore
from ember.ops.triton_kv import (
    check_cache_layout,
    gdc_launch_dependents,
    gdc_wait,
    jit,
    next_power_of_2,
    pdl_enabled,
    pdl_launch,
    saturation,
    store_cache,
    tl,
)


@jit
def _rms_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    n_cols,
    stride_x,
    stride_res,
    stride_out,
    eps,
    weight_offset,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,  # launched with programmatic dependent launch (triton_kv.pdl_enabled)
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    # The weight before waiting on the kernel ahead (PDL): no kernel writes it; x after.
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32) + weight_offset
    if PDL:
        gdc_wait()
        gdc_launch_dependents()  # a short kernel: the next one may be scheduled now
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(res_ptr + row * stride_res + cols, x, mask=mask)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, axis=0) / n_cols
    normed = (xf * tl.math.rsqrt(var + eps)).to(x_ptr.dtype.element_ty)
    out = normed.to(tl.float32) * w
    tl.store(out_ptr + row * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    weight_offset: float = 0.0,
) -> torch.Tensor:
    """norm(x) * (weight + weight_offset) over the last dim of a 2-D x [N, D].

    With `residual`, x + residual is normalised and written back into `residual` (in place), so
    the caller keeps `residual` as the new residual stream.
    """
    n_rows, n_cols = x.shape
    out = torch.empty_like(x)
    if n_rows == 0:
        return out
    if x.stride(-1) != 1:
        x = x.contiguous()
    res = residual if residual is not None else x
    pdl = pdl_enabled(x.device)
    _rms_norm_kernel[(n_rows,)](
        x,
        res,
        weight,
        out,
        n_cols,
        x.stride(0),
        res.stride(0),
        out.stride(0),
        eps,
        weight_offset,
        HAS_RESIDUAL=residual is not None,
        BLOCK=next_power_of_2(n_cols),
        PDL=pdl,
        num_warps=8 if n_cols >= 4096 else 4,
        **pdl_launch(pdl),
    )
    return out


@jit
def _rotate_heads(
    base,
    n_heads,
    stride_h,
    cos,
    sin,
    d,
    dmask,
    dst,  # the cache row of this token's slot (STORE only)
    stride_dst_h,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    STORE: tl.constexpr,  # also store the rotated heads at dst, in dst's dtype
    SATURATE: tl.constexpr,  # fp8 caches: their largest finite value; 0.0: no clamp
):
    heads = tl.arange(0, BLOCK_H)
    for h0 in range(0, n_heads, BLOCK_H):
        h = h0 + heads
        mask = (h < n_heads)[:, None] & dmask[None, :]
        p1 = base + h[:, None] * stride_h + d[None, :]
        x1 = tl.load(p1, mask=mask, other=0.0)
        x2 = tl.load(p1 + HALF, mask=mask, other=0.0)
        dt = x1.dtype
        # Round cos/sin and each product as the reference does in the activation dtype.
        c = cos.to(dt).to(tl.float32)[None, :]
        s = sin.to(dt).to(tl.float32)[None, :]
        f1 = x1.to(tl.float32)
        f2 = x2.to(tl.float32)
        a = ((f1 * c).to(dt).to(tl.float32) - (f2 * s).to(dt).to(tl.float32)).to(dt)
        b = ((f2 * c).to(dt).to(tl.float32) + (f1 * s).to(dt).to(tl.float32)).to(dt)
        tl.store(p1, a, mask=mask)
        tl.store(p1 + HALF, b, mask=mask)
        if STORE:
            at = dst + h[:, None] * stride_dst_h + d[None, :]
            store_cache(at, a, mask, SATURATE)
            store_cache(at + HALF, b, mask, SATURATE)


@jit
def _rotary_kernel(
    q_ptr,
    k_ptr,
    pos_ptr,
    cos_ptr,
    sin_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    n_q_heads,
    n_k_heads,
    stride_q_tok,
    stride_q_head,
    stride_k_tok,
    stride_k_head,
    stride_cache,
    stride_v_tok,
    stride_v_head,
    block_size,
    stride_kc_block,
    stride_kc_slot,
    stride_kc_head,
    stride_vc_block,
    stride_vc_slot,
    stride_vc_head,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    WRITE_KV: tl.constexpr,  # also store the rotated k and v at the token's cache slot
    SATURATE: tl.constexpr,
    PDL: tl.constexpr,  # launched with programmatic dependent launch (triton_kv.pdl_enabled)
):
    # Two programs per token, side by side: q's heads (part 0); k's heads, with the cache
    # stores (part 1). Positions, slots and the tables are read before waiting on the kernel
    # ahead (PDL): no kernel writes them; q, k and v (which the kernel ahead does) after.
    tok = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1)
    pos = tl.load(pos_ptr + tok).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HALF
    cos = tl.load(cos_ptr + pos * stride_cache + d, mask=dmask, other=0.0)
    sin = tl.load(sin_ptr + pos * stride_cache + d, mask=dmask, other=0.0)
    slot = tok * 0 - 1  # a slot of -1: rotated, never stored (also a padding token's)
    if WRITE_KV:
        slot = tl.load(slot_ptr + tok).to(tl.int64)
    if PDL:
        gdc_wait()
        gdc_launch_dependents()  # a short kernel: the next one may be scheduled now
    if part == 0:
        _rotate_heads(
            q_ptr + tok * stride_q_tok, n_q_heads, stride_q_head, cos, sin, d, dmask,
            q_ptr, 0, HALF, BLOCK_H, False, SATURATE,
        )  # fmt: skip
    elif slot >= 0:
        block = slot // block_size
        offset = slot % block_size
        v_dst = v_cache_ptr + block * stride_vc_block + offset * stride_vc_slot
        heads = tl.arange(0, BLOCK_H)
        for h0 in range(0, n_k_heads, BLOCK_H):
            h = h0 + heads
            mask = (h < n_k_heads)[:, None] & dmask[None, :]
            src = v_ptr + tok * stride_v_tok + h[:, None] * stride_v_head + d[None, :]
            at = v_dst + h[:, None] * stride_vc_head + d[None, :]
            store_cache(at, tl.load(src, mask=mask, other=0.0), mask, SATURATE)
            store_cache(at + HALF, tl.load(src + HALF, mask=mask, other=0.0), mask, SATURATE)
        k_dst = k_cache_ptr + block * stride_kc_block + offset * stride_kc_slot
        _rotate_heads(
            k_ptr + tok * stride_k_tok, n_k_heads, stride_k_head, cos, sin, d, dmask,
            k_dst, stride_kc_head, HALF, BLOCK_H, True, SATURATE,
        )  # fmt: skip
    else:
        _rotate_heads(
            k_ptr + tok * stride_k_tok, n_k_heads, stride_k_head, cos, sin, d, dmask,
            k_ptr, 0, HALF, BLOCK_H, False, SATURATE,
        )  # fmt: skip


def rotary_triton(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
    kv_store: KVStore | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style rotary on q [T, Hq, D] and k [T, Hkv, D], in place (strided views allowed
    when the last dim is contiguous). cos/sin caches are [max_position, D // 2] float32.

    With `kv_store`, the same launch also stores the rotated k and the step's v at each token's
    cache slot, as `write_kv_triton` would (slot -1: skipped; fp8 caches: saturated), so the
    layer needs no KV-write kernel of its own."""
    num_tokens, n_q, head_dim = q.shape
    if num_tokens == 0:
        return q, k
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        raise ValueError("rotary_triton needs q and k with a contiguous last dimension")
    half = head_dim // 2
    pdl = pdl_enabled(q.device)
    if kv_store is not None:
        v, (k_cache, v_cache), slots = kv_store.v, kv_store.cache, kv_store.slot_mapping
        if v.stride(-1) != 1:
            v = v.contiguous()
        check_cache_layout(k_cache, v_cache)
        block_size = k_cache.shape[1]
        kc_strides, vc_strides = k_cache.stride()[:3], v_cache.stride()[:3]
        v_strides = (v.stride(0), v.stride(1))
    else:
        v, k_cache, v_cache, slots = k, k, k, positions  # placeholders, never read
        block_size, kc_strides, vc_strides, v_strides = 1, (0, 0, 0), (0, 0, 0), (0, 0)
    _rotary_kernel[(num_tokens, 2)](
        q,
        k,
        positions,
        cos_cache,
        sin_cache,
        v,
        k_cache,
        v_cache,
        slots,
        n_q,
        k.shape[1],
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        cos_cache.stride(0),
        *v_strides,
        block_size,
        *kc_strides,
        *vc_strides,
        HALF=half,
        BLOCK_H=min(next_power_of_2(n_q), max(1, 4096 // next_power_of_2(half))),
        BLOCK_D=next_power_of_2(half),
        WRITE_KV=kv_store is not None,
        SATURATE=saturation(k_cache.dtype) if kv_store is not None else 0.0,
        PDL=pdl,
        num_warps=4,
        **pdl_launch(pdl),
    )
    return q, k


@jit
def _silu_mul_kernel(
    x_ptr, out_ptr, d, stride_x, stride_out, BLOCK: tl.constexpr, PDL: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    if PDL:  # launched with programmatic dependent launch (triton_kv.pdl_enabled)
        gdc_wait()
        gdc_launch_dependents()
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + d + cols, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype).to(tl.float32)
    out = act * up.to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul_triton(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for x [N, 2d] = [gate | up]; returns [N, d]."""
    n_rows, two_d = x.shape
    d = two_d // 2
    out = torch.empty((n_rows, d), dtype=x.dtype, device=x.device)
    if n_rows == 0:
        return out
    if x.stride(-1) != 1:
        x = x.contiguous()
    block = min(1024, next_power_of_2(d))
    pdl = pdl_enabled(x.device)
    _silu_mul_kernel[(n_rows, -(-d // block))](
        x, out, d, x.stride(0), out.stride(0), BLOCK=block, PDL=pdl, **pdl_launch(pdl)
    )
    return out
