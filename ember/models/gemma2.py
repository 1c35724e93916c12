"""Gemma 2, and the parts Gemma 3 shares with it.

Against Llama: the embedding is scaled by sqrt(hidden_size) (rounded to the activation dtype,
as HF does); every norm is (1 + weight) RMSNorm and each sub-block has a norm before and after
it; the MLP is GeGLU (gelu, tanh approximation); attention scores are scaled by
query_pre_attn_scalar ** -0.5 and soft-capped, as are the final logits; layers alternate between
a sliding window and global attention (config.layer_types). Embeddings are tied.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ember.errors import ModelLoadError
from ember.layers.activation import GeluTanhAndMul
from ember.layers.linear import Embedding, Linear
from ember.layers.metadata import AttentionMetadata, KVCache
from ember.layers.norm import GemmaRMSNorm
from ember.layers.rotary import RotaryEmbedding
from ember.models.base import CausalLM
from ember.models.config import ModelConfig
from ember.models.llama import LlamaAttention, LlamaMLP, run_layers
from ember.models.weights import checkpoint_slots, load_into_slots, raise_if_missing

_GELU_TANH = frozenset({"gelu_pytorch_tanh", "gelu_tanh"})


class GemmaDecoderLayer(nn.Module):
    def __init__(
        self, config: ModelConfig, layer: int, rotary: RotaryEmbedding, qk_norm: bool
    ) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(
            config,
            layer,
            rotary,
            qk_norm=qk_norm,
            norm=GemmaRMSNorm,
            scale=(config.query_pre_attn_scalar or config.head_dim) ** -0.5,
            logit_softcap=config.attn_logit_softcapping,
        )
        self.mlp = LlamaMLP(config, GeluTanhAndMul())
        eps = config.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(config.hidden_size, eps)
        self.post_attention_layernorm = GemmaRMSNorm(config.hidden_size, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(config.hidden_size, eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(config.hidden_size, eps)

    def forward(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        residual: torch.Tensor | None,
        kv_cache: KVCache,
        attn_metadata: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # As in Llama the residual stream is carried apart: the stream is hidden_states +
        # residual, and each pre-norm fuses that add. The post-norms apply to the sub-block's
        # output alone, before it joins the stream.
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states, kv_cache, attn_metadata)
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states, residual = self.pre_feedforward_layernorm(hidden_states, residual)
        hidden_states = self.post_feedforward_layernorm(self.mlp(hidden_states))
        return hidden_states, residual


class GemmaModel(nn.Module):
    def __init__(self, config: ModelConfig, qk_norm: bool) -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        rotaries = rotary_per_layer(config)
        self.layers = nn.ModuleList(
            GemmaDecoderLayer(config, i, rotaries[i], qk_norm)
            for i in range(config.num_hidden_layers)
        )
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        hidden_states = self.embed_tokens(input_ids)
        # The scale is rounded to the activation dtype first, as HF does (sqrt(3584) is 59.87 in
        # float32 and 60.0 in bfloat16). A Python float: no device tensor, so CUDA graphs
        # capture it as a constant.
        normalizer = torch.tensor(self.hidden_size**0.5, dtype=hidden_states.dtype).item()
        hidden_states = hidden_states * normalizer
        return run_layers(
            self.layers, self.norm, hidden_states, positions, kv_caches, attn_metadata
        )


def rotary_per_layer(config: ModelConfig) -> list[RotaryEmbedding]:
    """One RotaryEmbedding per layer, shared among layers of the same rope: global layers use
    rope_theta and rope_scaling; with config.rope_local_theta (Gemma 3) sliding-window layers
    use that base, unscaled."""
    global_rope = RotaryEmbedding(
        config.head_dim, config.max_context_len, config.rope_theta, config.rope_scaling
    )
    if config.rope_local_theta is None:
        return [global_rope] * config.num_hidden_layers
    local_rope = RotaryEmbedding(config.head_dim, config.max_context_len, config.rope_local_theta)
    return [
        local_rope if config.layer_sliding_window(i) is not None else global_rope
        for i in range(config.num_hidden_layers)
    ]


class Gemma2ForCausalLM(CausalLM):
    qk_norm = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.hidden_act not in _GELU_TANH:
            raise ModelLoadError(
                f"hidden_activation '{config.hidden_act}' is not supported for "
                f"{config.architecture}; supported: gelu_pytorch_tanh"
            )
        self.config = config
        self.model = GemmaModel(config, self.qk_norm)
        # Gemma always ties the head to the embeddings; allocate nothing for it.
        with torch.device("meta"):
            self.lm_head = Linear(config.hidden_size, config.vocab_size)
        self.lm_head.weight = self.model.embed_tokens.weight

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden_states).float()
        cap = self.config.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def checkpoint_name(self, name: str) -> str | None:
        """The name of a checkpoint tensor in this model, or None for one it does not use."""
        if name == "lm_head.weight" or name.endswith("rotary_emb.inv_freq"):
            return None
        return name

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        slots = checkpoint_slots(self)
        renamed = (
            (ours, tensor)
            for name, tensor in weights
            if (ours := self.checkpoint_name(name)) is not None
        )
        loaded = load_into_slots(slots, renamed, lambda _: False, self.config.architecture)
        raise_if_missing(slots, loaded)
