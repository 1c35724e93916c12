"""Paged attention as a layer: store the step's k/v in the cache, then attend over the cache."""

from __future__ import annotations

import torch
from torch import nn

from ember.layers.metadata import AttentionMetadata, KVCache
from ember.ops import get_paged_attention, get_write_kv, varlen_attention_ref


class Attention(nn.Module):
    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        scale: float | None = None,
        sliding_window: int | None = None,
        logit_softcap: float | None = None,
    ) -> None:
        super().__init__()
        if num_heads % num_kv_heads != 0:
            raise ValueError(f"{num_heads} query heads cannot share {num_kv_heads} KV heads")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5 if scale is None else scale
        self.sliding_window = sliding_window
        self.logit_softcap = logit_softcap

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: KVCache,
        attn_metadata: AttentionMetadata,
        kv_stored: bool = False,
    ) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq, D].

        An empty cache (numel 0, as in a profiling run before the cache is allocated) means
        attention within the new tokens only. `kv_stored`: k and v are in the cache already
        (stored by the rotary embedding's kernel), so only attend.
        """
        k_cache, v_cache = kv_cache
        if k_cache.numel() == 0:
            return varlen_attention_ref(
                q, k, v, attn_metadata, self.scale, self.sliding_window, self.logit_softcap
            )
        if not kv_stored:
            get_write_kv(q.device)(k_cache, v_cache, k, v, attn_metadata.slot_mapping)
        return get_paged_attention(q.device)(
            q, k_cache, v_cache, attn_metadata, self.scale, self.sliding_window, self.logit_softcap
        )

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
            f"scale={self.scale:.4g}, sliding_window={self.sliding_window}, "
            f"logit_softcap={self.logit_softcap}"
        )
