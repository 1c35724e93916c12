"""Triton paged attention: one kernel over block tables for prefill, decode and chunked prefill.

Same signature and semantics as `attention_ref.paged_attention_ref` (see its docstring).

How work is cut:
- A program owns one KV head and a tile of BLOCK_M query rows. The rows are the `group` query
  heads that share that KV head, for BLOCK_M // group consecutive tokens of one sequence
  (row r = token r // group, head r % group), so each K/V tile is read once for the whole group.
- "tiles" mode (any query length): program p -> (sequence, token tile) by a binary search over
  query_start_loc on the device; the grid is an upper bound (T // tokens_per_tile + S) computed
  from shapes alone, and spare programs exit at once. No GPU->CPU sync, CUDA-graph safe.
- "single" mode (sequences with exactly one new token): program p = sequence p, BLOCK_M is the
  group padded to >= 16 rows. A decode-only step (max_query_len == 1) uses it alone; a mixed step
  runs both launches, the tiles launch skipping the one-token sequences.
- Split-KV (flash-decoding) in single mode: the key range of each sequence is cut into
  `num_kv_splits` pieces on a third grid axis (pieces past the sequence's keys exit at once; one
  piece alone writes its output). Each piece writes an unnormalised partial (acc, max, sum) in
  fp32 and counts itself in on a per-(sequence, KV head) counter; the last to arrive merges them
  (no second kernel: batch-1 decode 232.3 -> 233.3 tok/s on the H200, 2026-12-04). Chosen when
  S * Hkv programs leave SMs without one (kv_splits_for). The counters
  (triton_kv.arrival_counts) are shared by the launches on a device: one split launch at a time
  per device (a stream's order).
- fp8 caches (--kv-cache-dtype fp8): K/V tiles are loaded as fp8 (half the bytes) and widened
  to fp16 for the dot products (one packed conversion on sm_89+), q saturated to fp16's range;
  no scale, as the writer stores values unscaled. H200, Llama-8B heads: 1.22x a bf16 cache's
  speed at 256 x 640 keys, 1.29x at 256 x 2048 (widening to bf16 had been 0.9x).
- Scores and softmax in fp32 with exp2 (online softmax); the sliding window starts the key loop
  at the first tile that any row of the tile can see, so whole blocks outside it are never read.
  Only the tiles on the causal diagonal and the window's edge are masked; the rest run unmasked.
- CUDA graphs: the split count is read from the metadata (max_seq_len) at call time and frozen
  into a captured graph; pass num_kv_splits (kv_splits_for with the model's max length) there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

import torch

from ember.layers.metadata import AttentionMetadata
from ember.ops.triton_kv import (
    arrival_counts,
    available,
    check_cache_layout,
    gdc_launch_dependents,
    gdc_wait,
    jit,
    jit_varying,
    last_to_arrive,
    next_power_of_2,
    pdl_enabled,
    pdl_launch,
    tl,
)

__all__ = [
    "KernelConfig",
    "available",
    "kv_splits_for",
    "paged_attention_into",
    "paged_attention_triton",
]

_NO_WINDOW = 1 << 30  # a window wider than any sequence: the window mask never bites


@dataclass(frozen=True, slots=True)
class KernelConfig:
    """Tile shape and launch parameters of one attention launch (rows x keys per program)."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    # Decode without a window: one key loop masked only at the sequence's end, instead of an
    # unmasked loop and a masked one (fewer live registers: 144 against 216 a thread for
    # Llama-8B heads, 128-key tiles, on sm_90: 3 programs an SM instead of 2; kernel_ir.py). The
    # fp8 decode default, and bf16's where few programs run (_decode_config).
    one_loop: bool = False
    # fp8 caches: widen each V tile to fp16 in registers, times the runtime v_scale (1.0: the
    # writers store V unscaled), before it is staged for P·V. Without a runtime factor between
    # the load and the dot, Triton widens V in the dot operand's layout from byte loads (128
    # LDS.U8 a 128-key tile); with it, one vector load, the packed conversion and a transposed
    # ldmatrix: 1,022 instructions a warp for a 128-key tile against 1,206, 128 registers against
    # 214 (3 programs an SM at 3 stages; sm_90 SASS, scripts/kernel_ir.py). fp8's decode default
    # (_decode_config): 4% faster at 256 x 640 keys on the H200, level elsewhere.
    widen_v_early: bool = False


def _prefill_config(head_dim: int, group: int, elem_bytes: int) -> KernelConfig:
    if elem_bytes > 2:  # fp32 caches (tests): small tiles, or the fp32 accumulators spill
        cfg = KernelConfig(block_m=64, block_n=32, num_warps=4, num_stages=2)
    elif head_dim <= 64:
        cfg = KernelConfig(block_m=128, block_n=64, num_warps=4, num_stages=3)
    elif head_dim <= 128:
        cfg = KernelConfig(block_m=128, block_n=64, num_warps=8, num_stages=2)
    else:
        cfg = KernelConfig(block_m=64, block_n=32, num_warps=4, num_stages=2)
    return _fit_group(cfg, group)


def _decode_config(
    head_dim: int, group: int, elem_bytes: int, few: bool, split: bool = False
) -> KernelConfig:
    """The decode launch's tiles. `few`: a step of 2+ sequences whose (sequence, KV head)
    programs fit on the GPU's SMs one each (few_programs), so each program's own chain of tiles
    sets the time, not HBM; `split`: the keys are cut into pieces."""
    # H200 sweeps, Llama-8B heads (gpu_check --section tune / tune-fp8 / tune-splits,
    # docs/benchmarks.md, sixth and fifteenth sessions):
    # - bf16, many programs (batches that fill the GPU): 64-key tiles on 2 warps, 3 stages:
    #   168.8 us against 180.0 for 128-key tiles on 4 warps at 256 x 640 keys, 42.9 against
    #   57.0 at 64 x 560.
    # - few programs, and fp8 always: 128-key tiles in one loop with 5 stages (two shared
    #   buffers a K/V tile, so a program has its next tile in flight). bf16 at 16 x 560 keys:
    #   14.7 us against 23.6 for the 64-key tiles; at 4 x 4096 in 4 pieces 24.9 against 31.3
    #   for the two-stage 128-key tiles. fp8: 141.5 vs 143.6 us at 256 x 640, 370.6 vs 391.5 at
    #   256 x 2048. A sliding window falls back to two loops.
    # - fp8 with V widened in registers (KernelConfig.widen_v_early; sixteenth session,
    #   tune-fp8): 137.0 against 142.4 us at 256 x 640 keys, within 1% at 256 x 2048, 64 x 640,
    #   16 x 8192 in 1 or 4 pieces and 1 x 8192 in 16 or 32.
    # - bf16, one sequence in pieces: 128-key tiles on 4 warps, 2 stages (few_programs says why).
    if elem_bytes > 2:  # fp32 caches (tests)
        cfg = KernelConfig(block_m=16, block_n=32, num_warps=4, num_stages=2)
    elif head_dim > 128:  # Gemma's 256: 64-key tiles, the fp8 cache with a third stage
        cfg = KernelConfig(
            block_m=16, block_n=64, num_warps=4, num_stages=3 if elem_bytes == 1 else 2
        )
    elif elem_bytes == 1 or few:  # fp8 with V widened in registers
        cfg = KernelConfig(
            block_m=16, block_n=128, num_warps=4, num_stages=5, one_loop=True,
            widen_v_early=elem_bytes == 1,
        )  # fmt: skip
    elif split:  # one sequence cut into pieces (batch-1 decode)
        cfg = KernelConfig(block_m=16, block_n=128, num_warps=4, num_stages=2)
    else:
        cfg = KernelConfig(block_m=16, block_n=64, num_warps=2, num_stages=3)
    return _fit_group(cfg, group)


def _fit_group(cfg: KernelConfig, group: int) -> KernelConfig:
    return replace(cfg, block_m=max(cfg.block_m, next_power_of_2(group)))


@cache
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":  # Triton's interpreter (TRITON_INTERPRET=1) on CPU tensors
        return 132
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_properties(index).multi_processor_count


def few_programs(num_seqs: int, num_kv_heads: int, device: torch.device) -> bool:
    """Whether a decode step of 2+ sequences has no more (sequence, KV head) programs than SMs.

    One sequence (batch-1 decode) keeps the two-stage tiles: there the kernel runs between the
    fused GEMVs under programmatic dependent launch, and the engine's batch-1 decode was 0.5%
    slower with the deeper tiles (249.4-249.8 against 250.7-250.8 tok/s, H200, fifteenth
    session) although the kernel alone was faster.
    """
    return num_seqs > 1 and num_seqs * num_kv_heads <= _num_sms(device)


def kv_splits_for(num_seqs: int, num_kv_heads: int, max_seq_len: int, device: torch.device) -> int:
    """How many pieces to cut each sequence's keys into for a decode-only step.

    As many as keep every (sequence, KV head, piece) program on an SM of its own, at most 16:
    more pieces only add merging. H200, Llama-8B heads, bf16, with _decode_config's tiles
    (gpu_check --section splits-policy, docs/benchmarks.md, fifteenth session; µs a layer):
    16 x 560 keys 14.8 unsplit against 27.6 in 5 pieces before; 2 x 8192 25.9 in 8 against
    37.3 in 32; 1 x 8192 22.3 in 16 against 23.9 in 32. A caller that captures CUDA graphs
    should pass the model's max length here, since the count is frozen into the graph; the
    kernel then cuts a shorter sequence into as many 1-tile pieces as it has.
    """
    wanted = _num_sms(device) // max(1, num_seqs * num_kv_heads)
    by_length = max(1, max_seq_len // 128)  # >= one 128-key tile per piece
    return int(max(1, min(wanted, by_length, 16)))


@jit
def _attend_tiles(
    acc,
    l_i,
    m_i,
    q,
    q_pos,
    start_lo,
    start_hi,
    kv_lo,
    kv_end,
    window,
    block_row,
    k_base,
    v_base,
    scale,
    softcap,
    v_scale,
    stride_k_block,
    stride_k_slot,
    stride_v_block,
    stride_v_slot,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    MASKED: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    USE_SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    KV_FP8: tl.constexpr,
    V_EARLY: tl.constexpr,
    BOUNDS_ONLY: tl.constexpr,
):
    """Online softmax over the key tiles starting at start_lo, start_lo + BLOCK_N, .. < start_hi.

    Unmasked (MASKED=False) only for tiles that every valid row sees whole; padding rows have
    q = 0 there, so their scores stay finite and they are never stored. BOUNDS_ONLY (with
    MASKED=False): keys at or past kv_end are masked, nothing else (decode without a window:
    every key before the end is visible). Their K is read from block 0 of the cache, whatever
    it holds, and their scores set to -inf; their V is not read. A tile always holds a key
    before kv_end, so the running max stays finite.
    """
    cols = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)
    for start in range(start_lo, start_hi, BLOCK_N):
        k_pos = start + cols
        if MASKED:
            k_load = (k_pos < kv_end) & (k_pos >= kv_lo)
            page = tl.load(block_row + k_pos // PAGE_SIZE, mask=k_load, other=0).to(tl.int64)
        elif BOUNDS_ONLY:
            k_load = k_pos < kv_end
            page = tl.load(block_row + k_pos // PAGE_SIZE, mask=k_load, other=0).to(tl.int64)
        else:
            page = tl.load(block_row + k_pos // PAGE_SIZE).to(tl.int64)
        slot = k_pos % PAGE_SIZE
        k_ptrs = k_base + (page * stride_k_block + slot * stride_k_slot)[None, :] + dims[:, None]
        v_ptrs = v_base + (page * stride_v_block + slot * stride_v_slot)[:, None] + dims[None, :]
        k = tl.load(k_ptrs, mask=k_load[None, :], other=0.0) if MASKED else tl.load(k_ptrs)
        if KV_FP8:
            k = k.to(tl.float16)  # one packed conversion from fp8; to bf16 it takes several
        s = tl.dot(q, k, input_precision=DOT_PRECISION)
        if USE_SOFTCAP:
            # softcap * tanh(s / softcap), tanh(x) = 1 - 2 / (exp(2x) + 1): exact at +-inf.
            s = s * (scale / softcap)
            s = softcap * (1.0 - 2.0 / (tl.math.exp2(s * (2.0 * 1.4426950408889634)) + 1.0))
            s = s * 1.4426950408889634
        else:
            s = s * (scale * 1.4426950408889634)
        if MASKED:
            allowed = k_load[None, :] & (k_pos[None, :] <= q_pos[:, None])
            if USE_WINDOW:
                allowed = allowed & (k_pos[None, :] > q_pos[:, None] - window)
            s = tl.where(allowed, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # A row that has seen no key yet keeps max -inf; subtract 0 so p = 0, not NaN.
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            if BOUNDS_ONLY:
                s = tl.where(k_load[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_sub = m_new
        p = tl.math.exp2(s - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED or BOUNDS_ONLY:
            v = tl.load(v_ptrs, mask=k_load[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs)
        if KV_FP8:
            v = v.to(tl.float16)
            if V_EARLY:  # KernelConfig.widen_v_early
                v = v * tl.cast(v_scale, tl.float16)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@jit_varying("num_seqs", "num_splits")
def _paged_attention_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    part_acc_ptr,
    part_max_ptr,
    part_sum_ptr,
    arrivals_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    block_tables_ptr,
    num_seqs,
    num_q_heads,
    group,
    tokens_per_tile,
    num_splits,
    scale,
    softcap,
    window,
    stride_q_tok,
    stride_q_head,
    stride_o_tok,
    stride_o_head,
    stride_k_block,
    stride_k_slot,
    stride_k_head,
    stride_v_block,
    stride_v_slot,
    stride_v_head,
    stride_bt_seq,
    v_scale,  # V's stored values times this are V (1.0: unscaled); read with V_EARLY only
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    SINGLE_TOKEN: tl.constexpr,
    SKIP_SINGLE_TOKEN: tl.constexpr,
    SPLIT_KV: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    USE_SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 caches (exact tests), else "tf32" (unused)
    KV_FP8: tl.constexpr,  # the cache holds fp8: compute in fp16
    V_EARLY: tl.constexpr,  # KernelConfig.widen_v_early (fp8 caches)
    ONE_LOOP: tl.constexpr,  # KernelConfig.one_loop (single mode without a window only)
    PDL: tl.constexpr,  # launched with programmatic dependent launch (triton_kv.pdl_enabled)
    MERGE_CHUNK: tl.constexpr = 4,  # split pieces a round of the last piece's merge
):
    # The step's query starts and sequence lengths are read before waiting on the kernel ahead
    # (PDL): no kernel writes them; q, the block tables and the cache after.
    # Decode lets the kernel after it (the o projection) be scheduled as soon as it has waited:
    # its programs load their first weight tiles beside this one's (batch-1 decode 235.3-235.6
    # -> 235.9-236.0 tok/s on the H200; the GEMVs triggering that early were slower, 231.2).
    trigger_first: tl.constexpr = PDL and SINGLE_TOKEN
    kv_head = tl.program_id(1)
    if SINGLE_TOKEN:
        seq = tl.program_id(0)
        q_start = tl.load(query_start_loc_ptr + seq)
        q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
        q_first = 0
        skip = q_len != 1
    else:
        # Heaviest (last) tiles first: under causal masking they have the most keys.
        tile = tl.num_programs(0) - 1 - tl.program_id(0)
        # Largest seq with first_tile(seq) <= tile, first_tile(i) = qsl[i] // tokens_per_tile + i.
        lo = tile * 0
        hi = tile * 0 + num_seqs
        while hi - lo > 1:
            mid = (lo + hi) // 2
            go_right = tl.load(query_start_loc_ptr + mid) // tokens_per_tile + mid <= tile
            lo = tl.where(go_right, mid, lo)
            hi = tl.where(go_right, hi, mid)
        seq = lo
        q_start = tl.load(query_start_loc_ptr + seq)
        q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
        q_first = (tile - (q_start // tokens_per_tile + seq)) * tokens_per_tile
        skip = q_first >= q_len
        if SKIP_SINGLE_TOKEN:
            skip = skip | (q_len == 1)
    if skip:
        return

    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len

    # Keys this tile can see: [max(0, first query pos - window + 1), last query pos + 1).
    last_tok = tl.minimum(q_first + tokens_per_tile, q_len)
    kv_end = tl.minimum(seq_len, context_len + last_tok)
    kv_lo = tl.maximum(context_len + q_first - window + 1, 0)
    kv_begin = (kv_lo // BLOCK_N) * BLOCK_N
    if SPLIT_KV:
        split = tl.program_id(2)
        n_tiles = tl.cdiv(kv_end - kv_begin, BLOCK_N)
        tiles_per_split = tl.cdiv(n_tiles, num_splits)
        # Only the first `pieces` programs hold keys (short sequences in a graph captured for
        # the model's max length: most); the rest have nothing to do.
        pieces = tl.cdiv(n_tiles, tiles_per_split)
        if split >= pieces:
            return
        kv_begin = kv_begin + split * tiles_per_split * BLOCK_N
        kv_end = tl.minimum(kv_end, kv_begin + tiles_per_split * BLOCK_N)
    if PDL:
        gdc_wait()
    if trigger_first:
        gdc_launch_dependents()

    rows = tl.arange(0, BLOCK_M)
    row_tok = q_first + rows // group  # token index within the sequence's new tokens
    row_valid = (rows < group * tokens_per_tile) & (row_tok < q_len)
    q_head = kv_head * group + rows % group
    q_pos = tl.where(row_valid, context_len + row_tok, -1)
    tok = (q_start + row_tok).to(tl.int64)
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(
        q_ptr + tok[:, None] * stride_q_tok + q_head[:, None] * stride_q_head + dims[None, :],
        mask=row_valid[:, None],
        other=0.0,
    )
    if KV_FP8:  # fp16 compute: each K/V tile is widened to it after loading; q saturated to it
        q = tl.clamp(q.to(tl.float32), -65504.0, 65504.0).to(tl.float16)
    else:
        q = q.to(k_cache_ptr.dtype.element_ty)

    # Tiles that need no mask: wholly at or before the first row's position and wholly inside
    # the last row's window. [kv_begin, full_lo) and [full_hi, kv_end) are masked.
    min_pos = context_len + q_first
    max_pos = context_len + last_tok - 1
    full_lo = kv_begin
    if USE_WINDOW:
        full_lo = tl.cdiv(max_pos - window + 1, BLOCK_N) * BLOCK_N
        full_lo = tl.minimum(tl.maximum(kv_begin, full_lo), kv_end)
    full_hi = tl.maximum(full_lo, tl.minimum((min_pos + 1) // BLOCK_N * BLOCK_N, kv_end))

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    block_row = block_tables_ptr + seq.to(tl.int64) * stride_bt_seq
    k_base = k_cache_ptr + kv_head * stride_k_head
    v_base = v_cache_ptr + kv_head * stride_v_head
    # KernelConfig.one_loop: one loop over every key, masked at kv_end only.
    bounds_only: tl.constexpr = SINGLE_TOKEN and ONE_LOOP and not USE_WINDOW
    if bounds_only:
        full_hi = kv_end
    if USE_WINDOW:
        acc, l_i, m_i = _attend_tiles(
            acc, l_i, m_i, q, q_pos, kv_begin, full_lo, kv_lo, kv_end, window, block_row,
            k_base, v_base, scale, softcap, v_scale, stride_k_block, stride_k_slot, stride_v_block,
            stride_v_slot, HEAD_DIM, BLOCK_N, PAGE_SIZE, True, USE_WINDOW, USE_SOFTCAP,
            DOT_PRECISION, KV_FP8, V_EARLY, False,
        )  # fmt: skip
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, q_pos, full_lo, full_hi, kv_lo, kv_end, window, block_row,
        k_base, v_base, scale, softcap, v_scale, stride_k_block, stride_k_slot, stride_v_block,
        stride_v_slot, HEAD_DIM, BLOCK_N, PAGE_SIZE, False, USE_WINDOW, USE_SOFTCAP,
        DOT_PRECISION, KV_FP8, V_EARLY, bounds_only,
    )  # fmt: skip
    if not bounds_only:
        acc, l_i, m_i = _attend_tiles(
            acc, l_i, m_i, q, q_pos, full_hi, kv_end, kv_lo, kv_end, window, block_row,
            k_base, v_base, scale, softcap, v_scale, stride_k_block, stride_k_slot, stride_v_block,
            stride_v_slot, HEAD_DIM, BLOCK_N, PAGE_SIZE, True, USE_WINDOW, USE_SOFTCAP,
            DOT_PRECISION, KV_FP8, V_EARLY, False,
        )  # fmt: skip

    if PDL and not trigger_first:
        gdc_launch_dependents()
    out_ptrs = out_ptr + tok[:, None] * stride_o_tok + q_head[:, None] * stride_o_head
    out_ptrs += dims[None, :]
    if SPLIT_KV:
        base = (tok * num_q_heads + q_head) * num_splits
        if pieces == 1:
            _store_out(out_ptrs, acc, l_i, row_valid)
        else:
            _store_piece(part_acc_ptr, part_max_ptr, part_sum_ptr, base + split, acc, l_i, m_i,
                         row_valid, HEAD_DIM)  # fmt: skip
            # Count this piece in; the last to arrive merges them all.
            count = arrivals_ptr + seq * tl.num_programs(1) + kv_head
            if last_to_arrive(count, pieces):
                acc, l_i = _merge_pieces(
                    part_acc_ptr, part_max_ptr, part_sum_ptr, base, row_valid, pieces, HEAD_DIM,
                    MERGE_CHUNK,
                )  # fmt: skip
                _store_out(out_ptrs, acc, l_i, row_valid)
    else:
        _store_out(out_ptrs, acc, l_i, row_valid)


@jit
def _store_out(out_ptrs, acc, l_i, row_valid):
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(out_ptrs, out.to(out_ptrs.dtype.element_ty), mask=row_valid[:, None])


@jit
def _store_piece(
    part_acc_ptr, part_max_ptr, part_sum_ptr, part, acc, l_i, m_i, row_valid,
    HEAD_DIM: tl.constexpr,
):  # fmt: skip
    """A split piece's unnormalised partial: its max and sum (log2 domain) and accumulator."""
    dims = tl.arange(0, HEAD_DIM)
    tl.store(part_max_ptr + part, m_i, mask=row_valid)
    tl.store(part_sum_ptr + part, l_i, mask=row_valid)
    tl.store(part_acc_ptr + part[:, None] * HEAD_DIM + dims[None, :], acc, mask=row_valid[:, None])


@jit
def _merge_pieces(
    part_acc_ptr, part_max_ptr, part_sum_ptr, base, row_valid, pieces,
    HEAD_DIM: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """The pieces' partials of each row (at base + 0 .. pieces - 1) combined: (acc, sum) to
    normalise as an unsplit program's. CHUNK pieces a round; the loads skip L1 (other SMs
    wrote them)."""
    dims = tl.arange(0, HEAD_DIM)
    idx = tl.arange(0, CHUNK)
    m_run = tl.full(base.shape, float("-inf"), tl.float32)
    l_run = tl.zeros(base.shape, tl.float32)
    acc = tl.zeros([base.shape[0], HEAD_DIM], tl.float32)
    for first in range(0, pieces, CHUNK):
        ok = row_valid[:, None] & (first + idx < pieces)[None, :]
        at = base[:, None] + first + idx[None, :]
        m = tl.load(part_max_ptr + at, mask=ok, other=float("-inf"), cache_modifier=".cg")
        l_sum = tl.load(part_sum_ptr + at, mask=ok, other=0.0, cache_modifier=".cg")
        part = tl.load(
            part_acc_ptr + at[:, :, None] * HEAD_DIM + dims[None, None, :],
            mask=ok[:, :, None],
            other=0.0,
            cache_modifier=".cg",
        )
        m_new = tl.maximum(m_run, tl.max(m, 1))
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no piece: weights 0
        alpha = tl.math.exp2(m_run - m_sub)
        weight = tl.math.exp2(m - m_sub[:, None])
        l_run = l_run * alpha + tl.sum(weight * l_sum, 1)
        acc = acc * alpha[:, None] + tl.sum(weight[:, :, None] * part, 1)
        m_run = m_new
    return acc, l_run


def paged_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    attn_metadata: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
) -> torch.Tensor:
    """Attention of q [T, Hq, D] over the cached keys/values of each sequence; returns [T, Hq, D].

    The new tokens' k/v must already be in the cache (write_kv_triton).
    """
    out = torch.empty_like(q)
    paged_attention_into(
        out, q, k_cache, v_cache, attn_metadata, scale, sliding_window, logit_softcap
    )
    return out


def paged_attention_into(
    out: torch.Tensor,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    attn_metadata: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
    *,
    num_kv_splits: int | None = None,
    decode_config: KernelConfig | None = None,
    prefill_config: KernelConfig | None = None,
) -> None:
    """paged_attention_triton writing into `out` [T, Hq, D], with the launch choices exposed.

    num_kv_splits applies to decode-only steps (max_query_len == 1); None picks it from the
    metadata (kv_splits_for). The configs override the tile shapes (for tuning).
    """
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    num_seqs = attn_metadata.seq_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return
    if head_dim != next_power_of_2(head_dim) or head_dim < 16:
        raise ValueError(f"head_dim {head_dim} is not supported: use a power of two >= 16")
    if num_q_heads % num_kv_heads != 0:
        raise ValueError(f"{num_q_heads} query heads do not divide into {num_kv_heads} KV heads")
    check_cache_layout(k_cache, v_cache)
    if q.stride(-1) != 1:
        q = q.contiguous()
    if out.stride(-1) != 1:
        raise ValueError("out must have a contiguous last dimension")
    group = num_q_heads // num_kv_heads
    elem_bytes = k_cache.element_size()
    args = (q, k_cache, v_cache, out, attn_metadata, group, scale, logit_softcap, sliding_window)
    few = few_programs(num_seqs, num_kv_heads, q.device)  # the decode launch's tiles
    if attn_metadata.max_query_len <= 1:
        splits = num_kv_splits
        if splits is None:
            splits = kv_splits_for(num_seqs, num_kv_heads, attn_metadata.max_seq_len, q.device)
        cfg = decode_config or _decode_config(head_dim, group, elem_bytes, few, splits > 1)
        _launch(*args, _fit_group(cfg, group), single=True, skip_single=False, splits=splits)
        return
    cfg = _fit_group(prefill_config or _prefill_config(head_dim, group, elem_bytes), group)
    _launch(*args, cfg, single=False, skip_single=True, splits=1)
    cfg = _fit_group(decode_config or _decode_config(head_dim, group, elem_bytes, few), group)
    _launch(*args, cfg, single=True, skip_single=False, splits=1)


def _launch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    md: AttentionMetadata,
    group: int,
    scale: float,
    softcap: float | None,
    window: int | None,
    cfg: KernelConfig,
    *,
    single: bool,
    skip_single: bool,
    splits: int,
) -> None:
    num_tokens, num_q_heads, head_dim = q.shape
    page_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    num_seqs = md.seq_lens.shape[0]
    split = single and splits > 1
    pdl = pdl_enabled(q.device)
    fp8 = k_cache.element_size() == 1
    if single:
        tokens_per_tile = 1
        grid: tuple[int, ...] = (
            (num_seqs, num_kv_heads, splits) if split else (num_seqs, num_kv_heads)
        )
    else:
        tokens_per_tile = cfg.block_m // group
        grid = (num_tokens // tokens_per_tile + num_seqs, num_kv_heads)
    if split:
        part_acc = torch.empty(
            (num_tokens, num_q_heads, splits, head_dim), dtype=torch.float32, device=q.device
        )
        part_max = torch.empty(
            (num_tokens, num_q_heads, splits), dtype=torch.float32, device=q.device
        )
        part_sum = torch.empty_like(part_max)
    else:
        part_acc = part_max = part_sum = out  # unused by the kernel
    _paged_attention_kernel[grid](
        q,
        k_cache,
        v_cache,
        out,
        part_acc,
        part_max,
        part_sum,
        arrival_counts(q.device, "attention", num_seqs * num_kv_heads) if split else md.seq_lens,
        md.query_start_loc,
        md.seq_lens,
        md.block_tables,
        num_seqs,
        num_q_heads,
        group,
        tokens_per_tile,
        splits,
        scale,
        softcap if softcap is not None else 1.0,
        window if window is not None else _NO_WINDOW,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        md.block_tables.stride(0),
        1.0,  # v_scale: the writers store V unscaled
        HEAD_DIM=head_dim,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        PAGE_SIZE=page_size,
        SINGLE_TOKEN=single,
        SKIP_SINGLE_TOKEN=skip_single,
        SPLIT_KV=split,
        USE_WINDOW=window is not None,
        USE_SOFTCAP=softcap is not None,
        DOT_PRECISION="ieee" if k_cache.dtype == torch.float32 else "tf32",
        KV_FP8=fp8,
        V_EARLY=cfg.widen_v_early and fp8,
        ONE_LOOP=cfg.one_loop,
        PDL=pdl,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **pdl_launch(pdl),
    )
