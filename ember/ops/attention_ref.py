"""Reference paged attention in plain PyTorch: runs on CPU and CUDA, and is the oracle that the
Triton kernel is checked against. Clarity over speed: one sequence at a time, scores and softmax in
float32.

Semantics (see ember/layers/metadata.py for the layout): query j of a sequence with q_len new tokens
and seq_len cached tokens sits at position seq_len - q_len + j and attends to keys at positions
<= its own; with a sliding window W only to keys at positions > query_pos - W (W tokens, itself
included, as HF counts); with a softcap C the scores become tanh(s / C) * C before masking.
"""

from __future__ import annotations

import torch

from ember.layers.metadata import AttentionMetadata


def write_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store k, v [T, Hkv, D] at the flat slots [T] of caches [num_blocks, block_size, Hkv, D].

    The caches must be contiguous (a view, never a copy, is written); every slot must be >= 0.
    An fp8 cache stores the values saturated at its largest finite value (as the Triton writer
    does), with no scale.
    """
    num_kv_heads, head_dim = k_cache.shape[-2:]
    k_flat = k_cache.view(-1, num_kv_heads, head_dim)
    v_flat = v_cache.view(-1, num_kv_heads, head_dim)
    copy_rows(k_flat, slot_mapping, to_cache_dtype(k, k_cache.dtype))
    copy_rows(v_flat, slot_mapping, to_cache_dtype(v, v_cache.dtype))


FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def to_cache_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x in the cache's dtype; for fp8, saturated at its largest finite value first (a plain
    cast may give NaN out of range, depending on the torch version)."""
    if dtype in FP8_DTYPES:
        limit = torch.finfo(dtype).max
        return x.float().clamp(-limit, limit).to(dtype)
    return x.to(dtype)


def copy_rows(dst: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> None:
    """dst[index] = src along dim 0 (index_copy_), also for fp8 tensors, which index_copy_ does
    not take on the CPU: one-byte dtypes are copied as bytes."""
    if dst.element_size() == 1 and dst.dtype != torch.uint8:
        dst, src = dst.view(torch.uint8), src.view(torch.uint8)
    dst.index_copy_(0, index, src)


def paged_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    attn_metadata: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
) -> torch.Tensor:
    """Attention of q [T, Hq, D] over the cached keys/values of each sequence; returns [T, Hq, D].

    The new tokens' k/v must already be in the cache (write_kv).
    """
    out = torch.empty_like(q)
    block_size = k_cache.shape[1]
    starts = attn_metadata.query_start_loc_cpu
    for i, seq_len in enumerate(attn_metadata.seq_lens_cpu):
        start, end = starts[i], starts[i + 1]
        if start == end:
            continue
        num_blocks = -(-seq_len // block_size)
        blocks = attn_metadata.block_tables[i, :num_blocks]
        k = k_cache[blocks].flatten(0, 1)[:seq_len]
        v = v_cache[blocks].flatten(0, 1)[:seq_len]
        first_pos = seq_len - (end - start)
        out[start:end] = attend(q[start:end], k, v, first_pos, scale, sliding_window, logit_softcap)
    return out


def varlen_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_metadata: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
) -> torch.Tensor:
    """Causal attention within each sequence's new tokens only, no cache (a profiling run before
    the KV cache exists). Every sequence must be a whole prompt: seq_len == q_len."""
    out = torch.empty_like(q)
    starts = attn_metadata.query_start_loc_cpu
    for i in range(attn_metadata.num_seqs):
        start, end = starts[i], starts[i + 1]
        if start == end:
            continue
        out[start:end] = attend(
            q[start:end], k[start:end], v[start:end], 0, scale, sliding_window, logit_softcap
        )
    return out


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    first_pos: int,
    scale: float,
    sliding_window: int | None,
    logit_softcap: float | None,
) -> torch.Tensor:
    """One sequence: q [L, Hq, D] at positions first_pos.., k/v [S, Hkv, D] at positions 0..S-1."""
    q_len, num_heads, head_dim = q.shape
    seq_len, num_kv_heads, _ = k.shape
    group = num_heads // num_kv_heads
    # Query heads h*group .. h*group+group-1 share KV head h (HF's repeat_kv order).
    qf = q.float().permute(1, 0, 2).reshape(num_kv_heads, group * q_len, head_dim)
    kf = k.float().permute(1, 2, 0)  # [Hkv, D, S]
    vf = v.float().permute(1, 0, 2)  # [Hkv, S, D]
    scores = torch.bmm(qf, kf) * scale  # [Hkv, group * L, S]
    if logit_softcap is not None:
        scores = torch.tanh(scores / logit_softcap) * logit_softcap
    q_pos = torch.arange(first_pos, first_pos + q_len, device=q.device)[:, None]
    k_pos = torch.arange(seq_len, device=q.device)[None, :]
    allowed = k_pos <= q_pos
    if sliding_window is not None:
        allowed &= k_pos > q_pos - sliding_window
    scores = scores.view(num_kv_heads, group, q_len, seq_len)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).view(num_kv_heads, group * q_len, seq_len)
    out = torch.bmm(probs, vf)  # [Hkv, group * L, D]
    return out.view(num_heads, q_len, head_dim).permute(1, 0, 2).to(q.dtype)
