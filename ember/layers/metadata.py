"""Per-step inputs that attention needs, and the layout of the paged KV cache.

A step runs a flattened batch of T new tokens from S sequences (no padding): sequence i owns
tokens query_start_loc[i]:query_start_loc[i+1]. Its first new token sits at absolute position
seq_lens[i] - (query_start_loc[i+1] - query_start_loc[i]); the tokens before it are already in the
cache. Prefill, decode and chunked prefill are the same case with different query lengths.

KV cache layout, one pair per layer: k_cache and v_cache, each
[num_blocks, block_size, num_kv_heads, head_dim]. Token t of a sequence lives in block
block_tables[i][t // block_size] at offset t % block_size; its flat slot is
block * block_size + offset, which is what slot_mapping holds for the new tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KVCache = tuple[torch.Tensor, torch.Tensor]


@dataclass(slots=True)
class AttentionMetadata:
    query_start_loc: torch.Tensor  # int32 [S + 1], on the model's device
    seq_lens: torch.Tensor  # int32 [S]: tokens in the cache for each sequence after this step
    block_tables: torch.Tensor  # int32 [S, max_blocks], padded with 0
    slot_mapping: torch.Tensor  # int64 [T]: cache slot of each new token
    max_query_len: int
    max_seq_len: int
    # The same values on the host, so that the reference backend needs no device sync.
    query_start_loc_cpu: list[int]
    seq_lens_cpu: list[int]

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)


@dataclass(frozen=True, slots=True)
class KVStore:
    """Where a rotary embedding also stores a step's keys and values: v [T, Hkv, D], the layer's
    (k_cache, v_cache) [num_blocks, block_size, Hkv, D], and each token's flat slot [T]."""

    v: torch.Tensor
    cache: tuple[torch.Tensor, torch.Tensor]
    slot_mapping: torch.Tensor


def allocate_kv_cache(
    num_layers: int,
    shape: tuple[int, int, int, int],
    dtype: torch.dtype,
    device: torch.device,
    *,
    zero: bool,
) -> list[KVCache]:
    """One (k_cache, v_cache) pair a layer, each `shape` = [num_blocks, block_size, kv_heads,
    head_dim]. With zero=False only block 0 is zeroed and the rest holds whatever the memory
    held, NaN bit patterns included: zeroing a 96 GB cache took 100-114 ms of an H200's start,
    `torch.empty` 8-10 ms (docs/benchmarks.md, ninth session). That is safe because no kernel
    lets a slot that was never written reach an output: attention reads a sequence's keys below
    its length, all written, and masks the rest (their V is not loaded); rows padded into a
    captured graph read block 0's first slot, which is written or zero, so they stay finite.
    """
    alloc = torch.zeros if zero else torch.empty
    caches = [
        (alloc(shape, dtype=dtype, device=device), alloc(shape, dtype=dtype, device=device))
        for _ in range(num_layers)
    ]
    if not zero:
        for k_cache, v_cache in caches:
            k_cache[0].zero_()
            v_cache[0].zero_()
    return caches
