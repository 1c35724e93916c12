"""Compute kernels behind the layers: attention backends and KV cache writes.

`get_paged_attention(device)` and `get_write_kv(device)` pick the implementation: the Triton
kernels on CUDA (when Triton is installed), the PyTorch reference elsewhere, or everywhere when
EMBER_ATTENTION_BACKEND=torch. Both follow the signatures PagedAttentionFn and WriteKVFn, and the
Triton ones are checked against the reference by scripts/gpu_check.py.
"""

from __future__ import annotations

import functools
import os
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


@functools.cache
def use_triton(device: torch.device) -> bool:
    if device.type != "cuda" or os.environ.get("EMBER_ATTENTION_BACKEND", "auto") == "torch":
        return False
    from ember.ops.triton_kv import available

    return available()


def get_write_kv(device: torch.device) -> WriteKVFn:
    """The KV cache writer for tensors on `device`."""
    if use_triton(device):
        from ember.ops.triton_kv import write_kv_triton

        return write_kv_triton
    return write_kv


def get_paged_attention(device: torch.device) -> PagedAttentionFn:
    """The attention backend for tensors on `device`."""
    if use_triton(device):
        from ember.ops.triton_attention import paged_attention_triton

        return paged_attention_triton
    return paged_attention_ref


__all__ = [
    "PagedAttentionFn",
    "WriteKVFn",
    "get_paged_attention",
    "get_write_kv",
    "paged_attention_ref",
    "use_triton",
    "varlen_attention_ref",
    "write_kv",
]
