"""The qkv GEMV's rotary epilogue (ops/triton_gemv.py): a one-token qkv projection that
finishes its own output, q and k rotated (neox style) at the token's position and k and v
stored at its cache slot, so the layer runs no rotary kernel. See QKVRotary; the GEMV kernel
calls rotary_columns for its programs' features and rotary_epilogue at its end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ember.ops.triton_kv import check_cache_layout, jit, saturation, store_cache, tl

__all__ = ["QKVRotary", "rotary_args", "rotary_columns", "rotary_epilogue"]


@dataclass(frozen=True, slots=True)
class QKVRotary:
    """What a one-token qkv projection needs to finish its output in its own epilogue: neox
    rotary on q and k at `positions` [1] from float32 tables [max_position, head_dim // 2]
    (rounded as `rotary_triton` rounds), and with a `cache` (k_cache, v_cache) [blocks,
    block_size, Hkv, D], k and v stored at the token's slot in `slot_mapping` [1] (-1: not
    stored). The projection's output columns are q's heads, then k's, then v's."""

    positions: torch.Tensor
    cos_cache: torch.Tensor
    sin_cache: torch.Tensor
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    cache: tuple[torch.Tensor, torch.Tensor] | None = None
    slot_mapping: torch.Tensor | None = None


@jit
def rotary_columns(pid, BLOCK_N: tl.constexpr, HALF: tl.constexpr):
    """A qkv GEMV program's output features when rotary runs in its epilogue: BLOCK_N // 2
    rotation pairs (d, d + HALF) of one head, interleaved, so that a reshape to [BLOCK_N // 2,
    2] and a split give the two halves. Returns (columns, head, first d of the pairs)."""
    per_head: tl.constexpr = HALF // (BLOCK_N // 2)
    head = pid // per_head
    d0 = (pid % per_head) * (BLOCK_N // 2)
    i = tl.arange(0, BLOCK_N)
    return head * (2 * HALF) + d0 + i // 2 + (i % 2) * HALF, head, d0


@jit
def rotary_epilogue(
    yd, y_ptr, cols, head, d0, pos, slot, cos_ptr, sin_ptr, stride_cache, n_q_heads,
    n_kv_heads, k_cache_ptr, v_cache_ptr, block_size, stride_kc_block, stride_kc_slot,
    stride_kc_head, stride_vc_block, stride_vc_slot, stride_vc_head, BLOCK_N: tl.constexpr,
    HALF: tl.constexpr, STORE_KV: tl.constexpr, SATURATE: tl.constexpr,
):  # fmt: skip
    """One token's q, k or v features (yd, in y's dtype, laid out by rotary_columns): q and k
    rotated at position `pos`, rounded as the rotary kernel rounds (triton_fused), and written
    to y; with STORE_KV, k and v also stored at the token's cache `slot` (-1: skipped)."""
    dt = yd.dtype
    p = d0 + tl.arange(0, BLOCK_N // 2)
    c = tl.load(cos_ptr + pos * stride_cache + p).to(dt).to(tl.float32)
    s = tl.load(sin_ptr + pos * stride_cache + p).to(dt).to(tl.float32)
    x1, x2 = tl.split(tl.reshape(yd, [BLOCK_N // 2, 2]))
    f1 = x1.to(tl.float32)
    f2 = x2.to(tl.float32)
    a = ((f1 * c).to(dt).to(tl.float32) - (f2 * s).to(dt).to(tl.float32)).to(dt)
    b = ((f2 * c).to(dt).to(tl.float32) + (f1 * s).to(dt).to(tl.float32)).to(dt)
    rotated = tl.reshape(tl.join(a, b), [BLOCK_N])
    out = tl.where(head < n_q_heads + n_kv_heads, rotated, yd)  # v heads: not rotated
    tl.store(y_ptr + cols, out)
    if STORE_KV:  # noqa: SIM102 (a compile-time guard: no cache code without a store)
        if head >= n_q_heads and slot >= 0:
            block = slot // block_size
            offset = slot % block_size
            d = cols - head * (2 * HALF)
            if head < n_q_heads + n_kv_heads:
                at = (k_cache_ptr + block * stride_kc_block + offset * stride_kc_slot
                      + (head - n_q_heads) * stride_kc_head)  # fmt: skip
            else:
                at = (v_cache_ptr + block * stride_vc_block + offset * stride_vc_slot
                      + (head - n_q_heads - n_kv_heads) * stride_vc_head)  # fmt: skip
            store_cache(at + d, out, d >= 0, SATURATE)


def rotary_args(
    rotary: QKVRotary | None, n_cols: int, block_n: int, x: torch.Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """triton_gemv._gemv_kernel's rotary-epilogue arguments, in order, and its constexprs;
    placeholders (never read) without `rotary`."""
    if rotary is None:
        args = (x, x, x, 0, 0, 0, *_no_store(x))
        return args, {"ROTARY": False, "HALF": 1, "STORE_KV": False, "SATURATE": 0.0}
    heads, dim = rotary.num_q_heads + 2 * rotary.num_kv_heads, rotary.head_dim
    if n_cols != heads * dim:
        raise ValueError(f"a qkv projection of {heads} heads of {dim} has {heads * dim} "
                         f"features, not {n_cols}")  # fmt: skip
    if dim % 2 or (dim // 2) % (block_n // 2) or block_n % 2:
        raise ValueError(f"block_n {block_n} must be even and its half divide head_dim / 2")
    if rotary.positions.numel() != 1 or rotary.cos_cache.stride(-1) != 1:
        raise ValueError("rotary needs one position and cos/sin tables with a contiguous row")
    if rotary.cache is None or rotary.slot_mapping is None:
        stores = False
        cache_args = _no_store(x)
        fp8_max = 0.0
    else:
        stores = True
        k_cache, v_cache = rotary.cache
        check_cache_layout(k_cache, v_cache)
        cache_args = (rotary.slot_mapping, k_cache, v_cache, k_cache.shape[1],
                      *k_cache.stride()[:3], *v_cache.stride()[:3])  # fmt: skip
        fp8_max = saturation(k_cache.dtype)
    args = (rotary.positions, rotary.cos_cache, rotary.sin_cache, rotary.cos_cache.stride(0),
            rotary.num_q_heads, rotary.num_kv_heads, *cache_args)  # fmt: skip
    return args, {"ROTARY": True, "HALF": dim // 2, "STORE_KV": stores, "SATURATE": fp8_max}


def _no_store(x: torch.Tensor) -> tuple[Any, ...]:
    """Placeholders (never read) for the slot, cache and stride arguments: no KV store."""
    return (x, x, x, 1, 0, 0, 0, 0, 0, 0)
