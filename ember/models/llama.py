"""Llama and its close relatives: Mistral (sliding window), Qwen2 (q/k/v bias, often tied
embeddings) and Qwen3 (RMSNorm over each q/k head before rope).

q/k/v and gate/up are fused into one matmul each; load_weights maps the checkpoint's separate
tensors into them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ember.errors import ModelLoadError
from ember.layers import small_batch
from ember.layers.activation import SiluAndMul
from ember.layers.attention import Attention
from ember.layers.linear import Embedding, Linear, MergedLinear
from ember.layers.metadata import AttentionMetadata, KVCache, KVStore
from ember.layers.norm import RMSNorm
from ember.layers.rotary import RotaryEmbedding
from ember.models.base import CausalLM
from ember.models.config import ModelConfig
from ember.models.weights import checkpoint_slots, load_into_slots, raise_if_missing
from ember.ops.triton_gemv import PRE_ADD_RMSNORM, PRE_RMSNORM, PRE_SILU_MUL, gemv_triton
from ember.ops.triton_qkv_rotary import QKVRotary

_QK_NORM_MODEL_TYPES = frozenset({"qwen3"})


class LlamaAttention(nn.Module):
    """q/k/v projection (fused), optional per-head q/k norm, rope, paged attention, o_proj.
    Gemma reuses it with its own norm, scale and logit softcap."""

    def __init__(
        self,
        config: ModelConfig,
        layer: int,
        rotary: RotaryEmbedding,
        *,
        qk_norm: bool | None = None,  # default: by model type (Qwen3)
        norm: type[RMSNorm] = RMSNorm,
        scale: float | None = None,  # default: head_dim ** -0.5
        logit_softcap: float | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        self.split_sizes = [q_size, kv_size, kv_size]
        self.qkv_proj = MergedLinear(
            config.hidden_size,
            [("q_proj", q_size), ("k_proj", kv_size), ("v_proj", kv_size)],
            bias=config.attention_bias,
        )
        self.o_proj = Linear(q_size, config.hidden_size, bias=config.attention_out_bias)
        self.q_norm: RMSNorm | None = None
        self.k_norm: RMSNorm | None = None
        if qk_norm is None:
            qk_norm = config.model_type in _QK_NORM_MODEL_TYPES
        if qk_norm:
            self.q_norm = norm(self.head_dim, config.rms_norm_eps)
            self.k_norm = norm(self.head_dim, config.rms_norm_eps)
        self.rotary = rotary
        self.attn = Attention(
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            scale=scale,
            sliding_window=config.layer_sliding_window(layer),
            logit_softcap=logit_softcap,
        )

    def forward(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        kv_cache: KVCache,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        out = self.attend(positions, self.qkv_proj(hidden_states), kv_cache, attn_metadata)
        return self.o_proj(out)

    def epilogue_rotary(
        self, positions: torch.Tensor, kv_cache: KVCache, attn_metadata: AttentionMetadata
    ) -> QKVRotary | None:
        """For a one-token step through the fused GEMVs: the rotary embedding and KV store
        that the qkv GEMV's epilogue can do instead of the rotary kernel (ops/triton_gemv.py);
        None where q and k are normed between the projection and rotary (Qwen3)."""
        if self.q_norm is not None:
            return None
        stores = bool(kv_cache[0].numel())  # not in the profiling run (see attend)
        return QKVRotary(
            positions, self.rotary.cos_cache, self.rotary.sin_cache, self.num_heads,
            self.num_kv_heads, self.head_dim, kv_cache if stores else None,
            attn_metadata.slot_mapping if stores else None,
        )  # fmt: skip

    def attend(
        self,
        positions: torch.Tensor,
        qkv: torch.Tensor,
        kv_cache: KVCache,
        attn_metadata: AttentionMetadata,
        rotated: QKVRotary | None = None,
    ) -> torch.Tensor:
        """From the q/k/v projection's output [T, (Hq + 2 Hkv) D] to attention's [T, Hq D].
        `rotated`: the projection's epilogue rotated q and k already, and stored k and v in the
        cache if it had a KV store (epilogue_rotary)."""
        num_tokens = qkv.shape[0]
        q, k, v = qkv.split(self.split_sizes, dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        if rotated is not None:
            stored = rotated.cache is not None
            out = self.attn(q, k, v, kv_cache, attn_metadata, kv_stored=stored)
            return out.view(num_tokens, -1)
        if self.q_norm is not None and self.k_norm is not None:
            q = self.q_norm(q)
            k = self.k_norm(k)
        # The rotary kernel also stores k and v in the cache: one launch fewer a layer. Not in
        # the profiling run, whose empty cache means attention within the new tokens.
        store = KVStore(v, kv_cache, attn_metadata.slot_mapping) if kv_cache[0].numel() else None
        q, k = self.rotary(positions, q, k, store)
        out = self.attn(q, k, v, kv_cache, attn_metadata, kv_stored=store is not None)
        return out.view(num_tokens, -1)


class LlamaMLP(nn.Module):
    """Gated MLP over a fused gate_up projection; SiLU (Llama) or another gate activation."""

    def __init__(self, config: ModelConfig, act: nn.Module | None = None) -> None:
        super().__init__()
        size = config.intermediate_size
        self.gate_up_proj = MergedLinear(
            config.hidden_size, [("gate_proj", size), ("up_proj", size)], bias=config.mlp_bias
        )
        self.act = act if act is not None else SiluAndMul()
        self.down_proj = Linear(size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, layer, rotary)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # Fused small-batch GEMVs (layers/small_batch.py) take no biases.
        self.fusable = not (config.attention_bias or config.attention_out_bias or config.mlp_bias)

    def forward(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        residual: torch.Tensor | None,
        kv_cache: KVCache,
        attn_metadata: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fusable and small_batch.applies(hidden_states):
            return self._forward_fused(positions, hidden_states, residual, kv_cache, attn_metadata)
        # The residual stream is carried separately so each norm can fuse the preceding add.
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states, kv_cache, attn_metadata)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual

    def _forward_fused(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        residual: torch.Tensor | None,
        kv_cache: KVCache,
        attn_metadata: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """forward() as four GEMVs with the norms, residual adds and SiLU-mul fused in; the
        residual stream is written out of place (the GEMV's other programs still read it)."""
        attn, mlp = self.self_attn, self.mlp
        norm1, norm2 = self.input_layernorm, self.post_attention_layernorm
        rotary = attn.epilogue_rotary(positions, kv_cache, attn_metadata)
        if residual is None:
            residual = hidden_states
            qkv = gemv_triton(
                hidden_states, attn.qkv_proj.weight, pre=PRE_RMSNORM,
                norm_weight=norm1.weight, eps=norm1.eps, rotary=rotary,
            )  # fmt: skip
        else:
            summed = torch.empty_like(residual)
            qkv = gemv_triton(
                hidden_states, attn.qkv_proj.weight, pre=PRE_ADD_RMSNORM, norm_weight=norm1.weight,
                eps=norm1.eps, residual=residual, residual_out=summed, rotary=rotary,
            )  # fmt: skip
            residual = summed
        attended = attn.attend(positions, qkv, kv_cache, attn_metadata, rotated=rotary)
        out = gemv_triton(attended, attn.o_proj.weight)
        summed = torch.empty_like(residual)
        gate_up = gemv_triton(
            out, mlp.gate_up_proj.weight, pre=PRE_ADD_RMSNORM, norm_weight=norm2.weight,
            eps=norm2.eps, residual=residual, residual_out=summed,
        )  # fmt: skip
        return gemv_triton(gate_up, mlp.down_proj.weight, pre=PRE_SILU_MUL), summed


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        rotary = RotaryEmbedding(
            config.head_dim, config.max_context_len, config.rope_theta, config.rope_scaling
        )
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i, rotary) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        hidden_states = self.embed_tokens(input_ids)
        return run_layers(
            self.layers, self.norm, hidden_states, positions, kv_caches, attn_metadata
        )


def run_layers(
    layers: nn.ModuleList,
    norm: nn.Module,
    hidden_states: torch.Tensor,
    positions: torch.Tensor,
    kv_caches: list[KVCache],
    attn_metadata: AttentionMetadata,
) -> torch.Tensor:
    """A decoder stack and its final norm: the residual stream rides beside hidden_states
    (each layer's first norm fuses the add) until the final norm."""
    residual: torch.Tensor | None = None
    for layer, kv_cache in zip(layers, kv_caches, strict=True):
        hidden_states, residual = layer(positions, hidden_states, residual, kv_cache, attn_metadata)
    assert residual is not None
    hidden_states, _ = norm(hidden_states, residual)
    return hidden_states


class LlamaForCausalLM(CausalLM):
    model: LlamaModel

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.hidden_act != "silu":
            raise ModelLoadError(
                f"hidden_act '{config.hidden_act}' is not supported for {config.architecture}; "
                "supported: silu"
            )
        self.config = config
        self.model = LlamaModel(config)
        if config.tie_word_embeddings:
            # Allocate nothing for the head: it shares the embedding table.
            with torch.device("meta"):
                self.lm_head = Linear(config.hidden_size, config.vocab_size)
            self.lm_head.weight = self.model.embed_tokens.weight
        else:
            self.lm_head = Linear(config.hidden_size, config.vocab_size)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if small_batch.applies(hidden_states):  # one row on Hopper: the GEMV writes float32
            return gemv_triton(hidden_states, self.lm_head.weight, out_dtype=torch.float32)
        return self.lm_head(hidden_states).float()

    def droppable_parameters(self) -> tuple[str, ...]:
        return () if self.config.tie_word_embeddings else ("lm_head.weight",)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        slots = checkpoint_slots(self)
        tied = self.config.tie_word_embeddings

        def skip(name: str) -> bool:
            # rotary inv_freq buffers appear in some old checkpoints; ours are computed.
            return name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight")

        loaded = load_into_slots(slots, weights, skip, self.config.architecture)
        if not tied and "lm_head.weight" not in loaded and "model.embed_tokens.weight" in loaded:
            # Some checkpoints leave out the head and expect it tied to the embeddings.
            self.lm_head.weight = self.model.embed_tokens.weight
            loaded.add("lm_head.weight")
        raise_if_missing(slots, loaded)
