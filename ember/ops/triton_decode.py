"""Decode steps in one launch a layer: rotary + KV store + paged attention + split merge.

A decode-only step (every sequence adds one token) otherwise runs three kernels a layer: the
rotary kernel (which also stores k and v in the cache), attention, and, when the keys are split
(few sequences), the kernel that merges the pieces. At batch 1 each is a few µs of launch and
ramp for almost no bytes, ~10 µs a layer of a ~140 µs layer. Here one program per (sequence,
KV head, piece):
- rotates its query heads in registers (neox style, rounded as `RotaryEmbedding` does);
- the piece that holds the new token rotates its k, stores k and v at the token's slot
  (skipped for slot -1, a padding row; fp8 caches saturated), then a CTA barrier, so its own
  key loop reads them back from the cache;
- attends over its piece with the same tile loop as `triton_attention` (`_attend_tiles`);
- split: stores its partial (max, sum, acc), then counts itself in on a per-(sequence, KV head)
  counter; the piece that arrives last merges every partial and resets the counter to 0, so the
  buffer is ready for the next layer (and for a CUDA graph's next replay).

Not for sliding windows (Mistral, Gemma's local layers) or mixed steps: those keep the usual
kernels. The q and k given are not modified (the usual rotary kernel rotates them in place).
"""

from __future__ import annotations

from functools import cache

import torch

from ember.layers.metadata import AttentionMetadata, KVCache
from ember.ops.triton_attention import (
    KernelConfig,
    _attend_tiles,
    _decode_config,
    _fit_group,
    kv_splits_for,
)
from ember.ops.triton_kv import (
    check_cache_layout,
    jit,
    jit_varying,
    next_power_of_2,
    saturation,
    store_cache,
    tl,
)

# Counters of the split merge: one per (sequence, KV head). Splitting happens only when
# sequences x KV heads programs leave SMs idle (< the SM count), so this is plenty.
_MAX_COUNTERS = 4096


@cache
def _counters(device: torch.device) -> torch.Tensor:
    return torch.zeros(_MAX_COUNTERS, dtype=torch.int32, device=device)


@jit
def _rope_rows(ptrs, mask, cos, sin, swap, sign):
    """Rotate rows (loaded at `ptrs`, their halves swapped at `swap`) by cos/sin laid out over
    the full head ([D]: entry d holds frequency d mod D/2), rounding every product to the
    activation dtype as RotaryEmbedding does."""
    x = tl.load(ptrs, mask=mask, other=0.0)
    xs = tl.load(swap, mask=mask, other=0.0)
    dt = x.dtype
    c = cos.to(dt).to(tl.float32)
    s = sin.to(dt).to(tl.float32)
    a = (x.to(tl.float32) * c).to(dt).to(tl.float32)
    b = (xs.to(tl.float32) * s).to(dt).to(tl.float32)
    return (a + sign * b).to(dt)


@jit_varying("num_splits")
def _decode_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    pos_ptr,
    cos_ptr,
    sin_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    seq_lens_ptr,
    block_tables_ptr,
    out_ptr,
    part_acc_ptr,
    part_max_ptr,
    part_sum_ptr,
    counter_ptr,
    num_q_heads,
    num_kv_heads,
    group,
    num_splits,
    scale,
    softcap,
    stride_q_tok,
    stride_q_head,
    stride_k_tok,
    stride_k_head,
    stride_v_tok,
    stride_v_head,
    stride_o_tok,
    stride_o_head,
    stride_cos,
    stride_kc_block,
    stride_kc_slot,
    stride_kc_head,
    stride_vc_block,
    stride_vc_slot,
    stride_vc_head,
    stride_bt_seq,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,  # splits, padded to a power of two (the merge)
    PAGE_SIZE: tl.constexpr,
    SPLIT_KV: tl.constexpr,
    USE_SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    KV_FP8: tl.constexpr,
    SATURATE: tl.constexpr,
    ONE_LOOP: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    tok = seq.to(tl.int64)
    HALF: tl.constexpr = HEAD_DIM // 2
    dims = tl.arange(0, HEAD_DIM)
    swapped = (dims + HALF) % HEAD_DIM
    sign = tl.where(dims < HALF, -1.0, 1.0)
    pos = tl.load(pos_ptr + tok).to(tl.int64)
    cos = tl.load(cos_ptr + pos * stride_cos + dims % HALF)
    sin = tl.load(sin_ptr + pos * stride_cos + dims % HALF)
    seq_len = tl.load(seq_lens_ptr + seq)

    rows = tl.arange(0, BLOCK_M)
    row_valid = rows < group
    q_head = kv_head * group + rows % group
    q_row = q_ptr + tok * stride_q_tok + q_head[:, None] * stride_q_head
    q = _rope_rows(
        q_row + dims[None, :], row_valid[:, None], cos[None, :], sin[None, :],
        q_row + swapped[None, :], sign[None, :],
    )  # fmt: skip
    if KV_FP8:
        q = tl.clamp(q.to(tl.float32), -65504.0, 65504.0).to(tl.float16)
    else:
        q = q.to(k_cache_ptr.dtype.element_ty)

    kv_begin = seq_len * 0
    kv_end = seq_len
    split = 0
    if SPLIT_KV:
        split = tl.program_id(2)
        tiles_per_split = tl.cdiv(tl.cdiv(seq_len, BLOCK_N), num_splits)
        kv_begin = split * tiles_per_split * BLOCK_N
        kv_end = tl.minimum(seq_len, kv_begin + tiles_per_split * BLOCK_N)

    # The piece holding the new token (position seq_len - 1) stores its k and v first.
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    if (slot >= 0) & (seq_len - 1 >= kv_begin) & (seq_len - 1 < kv_end):
        k_row = k_ptr + tok * stride_k_tok + kv_head * stride_k_head
        k_new = _rope_rows(k_row + dims, dims < HEAD_DIM, cos, sin, k_row + swapped, sign)
        block = slot // PAGE_SIZE
        offset = slot % PAGE_SIZE
        k_at = k_cache_ptr + block * stride_kc_block + offset * stride_kc_slot
        store_cache(k_at + kv_head * stride_kc_head + dims, k_new, dims < HEAD_DIM, SATURATE)
        v_new = tl.load(v_ptr + tok * stride_v_tok + kv_head * stride_v_head + dims)
        v_at = v_cache_ptr + block * stride_vc_block + offset * stride_vc_slot
        store_cache(v_at + kv_head * stride_vc_head + dims, v_new, dims < HEAD_DIM, SATURATE)
        tl.debug_barrier()  # the whole program reads them back below

    q_pos = tl.where(row_valid, seq_len - 1, -1)
    full_hi = tl.maximum(kv_begin, tl.minimum(seq_len // BLOCK_N * BLOCK_N, kv_end))
    if ONE_LOOP:
        full_hi = kv_end
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    block_row = block_tables_ptr + tok * stride_bt_seq
    k_base = k_cache_ptr + kv_head * stride_kc_head
    v_base = v_cache_ptr + kv_head * stride_vc_head
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, q_pos, kv_begin, full_hi, 0, kv_end, 0, block_row, k_base, v_base,
        scale, softcap, stride_kc_block, stride_kc_slot, stride_vc_block, stride_vc_slot,
        HEAD_DIM, BLOCK_N, PAGE_SIZE, False, False, USE_SOFTCAP, DOT_PRECISION, KV_FP8,
        ONE_LOOP,
    )  # fmt: skip
    if not ONE_LOOP:
        acc, l_i, m_i = _attend_tiles(
            acc, l_i, m_i, q, q_pos, full_hi, kv_end, 0, kv_end, 0, block_row, k_base, v_base,
            scale, softcap, stride_kc_block, stride_kc_slot, stride_vc_block, stride_vc_slot,
            HEAD_DIM, BLOCK_N, PAGE_SIZE, True, False, USE_SOFTCAP, DOT_PRECISION, KV_FP8,
            False,
        )  # fmt: skip

    if SPLIT_KV:
        part = (tok * num_q_heads + q_head) * num_splits + split
        tl.store(part_max_ptr + part, m_i, mask=row_valid)
        tl.store(part_sum_ptr + part, l_i, mask=row_valid)
        tl.store(
            part_acc_ptr + part[:, None] * HEAD_DIM + dims[None, :], acc, mask=row_valid[:, None]
        )
        tl.debug_barrier()  # every thread's partial is stored before the count (release)
        counter = counter_ptr + seq * num_kv_heads + kv_head
        arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        if arrived == num_splits - 1:  # the last piece: merge them all
            _merge(
                out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, tok, kv_head, group,
                num_q_heads, num_splits, stride_o_tok, stride_o_head, HEAD_DIM, BLOCK_S,
            )  # fmt: skip
            tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")
    else:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(
            out_ptr + tok * stride_o_tok + q_head[:, None] * stride_o_head + dims[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=row_valid[:, None],
        )


@jit
def _merge(
    out_ptr,
    part_acc_ptr,
    part_max_ptr,
    part_sum_ptr,
    tok,
    kv_head,
    group,
    num_q_heads,
    num_splits,
    stride_o_tok,
    stride_o_head,
    HEAD_DIM: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Each query head of the group: the pieces' partials weighted by exp2(max - overall max).
    Loads bypass L1 (.cg): other SMs wrote the partials during this launch."""
    splits = tl.arange(0, BLOCK_S)
    split_ok = splits < num_splits
    dims = tl.arange(0, HEAD_DIM)
    for r in range(group):
        head = kv_head * group + r
        part = (tok * num_q_heads + head) * num_splits + splits
        m = tl.load(part_max_ptr + part, mask=split_ok, other=float("-inf"), cache_modifier=".cg")
        l_sum = tl.load(part_sum_ptr + part, mask=split_ok, other=0.0, cache_modifier=".cg")
        m_max = tl.max(m, 0)
        weight = tl.math.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max))
        denom = tl.sum(weight * l_sum, 0)
        acc = tl.load(
            part_acc_ptr + part[:, None] * HEAD_DIM + dims[None, :],
            mask=split_ok[:, None],
            other=0.0,
            cache_modifier=".cg",
        )
        out = tl.sum(acc * weight[:, None], 0) / tl.where(denom == 0.0, 1.0, denom)
        tl.store(
            out_ptr + tok * stride_o_tok + head * stride_o_head + dims,
            out.to(out_ptr.dtype.element_ty),
        )


def decode_applies(attn_metadata: AttentionMetadata, num_tokens: int, window: int | None) -> bool:
    """Whether a step can take `decode_attention_triton`: one new token per sequence, no
    sliding window. Reads only host-side metadata (no sync)."""
    return (
        window is None
        and attn_metadata.max_query_len == 1
        and num_tokens == attn_metadata.seq_lens.shape[0]
    )


def decode_attention_triton(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
    kv_cache: KVCache,
    attn_metadata: AttentionMetadata,
    scale: float,
    logit_softcap: float | None = None,
    *,
    num_kv_splits: int | None = None,
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """One decode step's attention from the q/k/v projection's output: q [S, Hq, D] and k, v
    [S, Hkv, D] (strided views allowed, last dim contiguous), positions [S], neox cos/sin caches
    [max_position, D // 2] float32. Stores each rotated k and v in the cache at its slot and
    returns attention's output [S, Hq, D] over the cache; q and k are left as they are.
    The metadata must describe a decode-only step (`decode_applies`)."""
    num_seqs, num_q_heads, head_dim = q.shape
    k_cache, v_cache = kv_cache
    num_kv_heads = k_cache.shape[2]
    if num_seqs != attn_metadata.seq_lens.shape[0] or attn_metadata.max_query_len > 1:
        raise ValueError("decode_attention_triton takes decode-only steps (one token a sequence)")
    if head_dim != next_power_of_2(head_dim) or head_dim < 16:
        raise ValueError(f"head_dim {head_dim} is not supported: use a power of two >= 16")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("q, k and v need a contiguous last dimension")
    check_cache_layout(k_cache, v_cache)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if num_seqs == 0:
        return out
    group = num_q_heads // num_kv_heads
    splits = num_kv_splits
    if splits is None:
        splits = kv_splits_for(num_seqs, num_kv_heads, attn_metadata.max_seq_len, q.device)
    split = splits > 1 and num_seqs * num_kv_heads <= _MAX_COUNTERS
    elem_bytes = k_cache.element_size()
    cfg = _fit_group(config or _decode_config(head_dim, group, elem_bytes, split), group)
    if split:
        grid: tuple[int, ...] = (num_seqs, num_kv_heads, splits)
        part_max = torch.empty(
            (num_seqs, num_q_heads, splits), dtype=torch.float32, device=q.device
        )
        part_sum = torch.empty_like(part_max)
        part_acc = torch.empty(
            (num_seqs, num_q_heads, splits, head_dim), dtype=torch.float32, device=q.device
        )
    else:
        splits = 1
        grid = (num_seqs, num_kv_heads)
        part_acc = part_max = part_sum = out  # unused by the kernel
    md = attn_metadata
    _decode_kernel[grid](
        q, k, v, positions, cos_cache, sin_cache, k_cache, v_cache, md.slot_mapping,
        md.seq_lens, md.block_tables, out, part_acc, part_max, part_sum, _counters(q.device),
        num_q_heads, num_kv_heads, group, splits, scale,
        logit_softcap if logit_softcap is not None else 0.0,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), cos_cache.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), md.block_tables.stride(0),
        HEAD_DIM=head_dim,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_S=next_power_of_2(splits),
        PAGE_SIZE=k_cache.shape[1],
        SPLIT_KV=split,
        USE_SOFTCAP=logit_softcap is not None,
        DOT_PRECISION="ieee" if k_cache.dtype == torch.float32 else "tf32",
        KV_FP8=elem_bytes == 1,
        SATURATE=saturation(k_cache.dtype),
        ONE_LOOP=cfg.one_loop,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )  # fmt: skip
    return out
