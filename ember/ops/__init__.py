"""Compute kernels behind the layers: attention backends and KV cache writes.

`get_paged_attention(device)` and `get_write_kv(device)` pick the implementation; today the PyTorch
reference everywhere. A Triton backend for CUDA plugs in here with the same signatures
(PagedAttentionFn, WriteKVFn) and is checked against the reference.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ember.layers.metadata import AttentionMetadata
from ember.ops.attention_ref import paged_attention_ref, varlen_attention_ref, write_kv


class PagedAttentionFn(Protocol):
    def __call__(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        attn_metadata: AttentionMetadata,
        scale: float,
        sliding_window: int | None = None,
        logit_softcap: float | None = None,
    ) -> torch.Tensor: ...


class WriteKVFn(Protocol):
    def __call__(
        self,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None: ...


def get_write_kv(device: torch.device) -> WriteKVFn:
    """The KV cache writer for tensors on `device`."""
    return write_kv


def get_paged_attention(device: torch.device) -> PagedAttentionFn:
    """The attention backend for tensors on `device`."""
    return paged_attention_ref


__all__ = [
    "PagedAttentionFn",
    "WriteKVFn",
    "get_paged_attention",
    "get_write_kv",
    "paged_attention_ref",
    "varlen_attention_ref",
    "write_kv",
]
