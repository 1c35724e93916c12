"""Rotary position embedding (neox style: rotate the two halves of the head, as HF Llama does).

cos/sin are computed once in float32 for every position up to max_position and looked up by
position; they match HF's per-call float32 computation (same products, same cos/sin).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ember.layers.metadata import KVStore
from ember.layers.rope_scaling import rope_frequencies
from ember.ops import get_write_kv, use_triton
from ember.ops.triton_fused import rotary_triton


class RotaryEmbedding(nn.Module):
    def __init__(
        self,
        head_dim: int,
        max_position: int,
        base: float,
        scaling: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_position = max_position
        self.base = base
        self.scaling = scaling
        # Built on the default device, so that a model constructed under `with torch.device(...)`
        # gets its caches there. On the meta device they are left empty for materialize_buffers:
        # arange, cos and the like have Python meta kernels, whose first use imports sympy and
        # torch's decompositions (1-5 s).
        device = torch.get_default_device()
        if device.type == "meta":
            shape = (max_position, head_dim // 2)
            cos = torch.empty(shape, dtype=torch.float32, device=device)
            sin = torch.empty(shape, dtype=torch.float32, device=device)
        else:
            cos, sin = self._tables(device)
        self.cos_cache = nn.Buffer(cos, persistent=False)
        self.sin_cache = nn.Buffer(sin, persistent=False)

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [max_position, head_dim // 2], float32, on `device`, both times the
        rope's attention factor (YaRN), as HF scales them: every kernel reads these tables, so
        none needs to know the factor."""
        freqs = rope_frequencies(self.head_dim, self.base, self.scaling)
        inv_freq = freqs.inv_freq.to(device)
        positions = torch.arange(self.max_position, dtype=torch.float32, device=device)
        angles = positions[:, None] * inv_freq[None, :]
        return angles.cos() * freqs.attention_factor, angles.sin() * freqs.attention_factor

    def materialize_buffers(self, device: torch.device) -> None:
        """The tables computed on `device` (for a module built on the meta device)."""
        cos, sin = self._tables(device)
        self.cos_cache, self.sin_cache = (
            nn.Buffer(cos, persistent=False),
            nn.Buffer(sin, persistent=False),
        )

    def forward(
        self,
        positions: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        kv_store: KVStore | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q [T, Hq, D] and k [T, Hkv, D] at positions [T]. Returns new tensors, or on
        CUDA the same ones rotated in place by one Triton kernel. With `kv_store`, also store
        the rotated k and kv_store.v in the cache at each token's slot (on CUDA in that same
        kernel)."""
        if q.is_cuda and use_triton(q.device):
            return rotary_triton(positions, q, k, self.cos_cache, self.sin_cache, kv_store)
        cos = self.cos_cache[positions].unsqueeze(1)  # [T, 1, D/2]
        sin = self.sin_cache[positions].unsqueeze(1)
        q, k = rotate_neox(q, cos, sin), rotate_neox(k, cos, sin)
        if kv_store is not None:
            k_cache, v_cache = kv_store.cache
            get_write_kv(q.device)(k_cache, v_cache, k, kv_store.v, kv_store.slot_mapping)
        return q, k

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_position={self.max_position}"


def rotate_neox(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., D] rotated neox style (its two halves as pairs) by cos/sin [..., D // 2], in
    x's dtype: every product rounded (the reference the Triton kernels are checked against)."""
    # Applied in x's dtype, as HF does, so bf16 results match transformers bit for bit.
    cos = cos.to(x.dtype)
    sin = sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
