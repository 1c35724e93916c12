"""Gemma config.json files as the Hub has them: keys left to transformers' defaults, Gemma 2's
even/odd layer rule, Gemma 3's sliding_window_pattern and two rope bases in both config
generations, and the text_config of a multimodal checkpoint."""

from __future__ import annotations

from typing import Any

import torch
import transformers
from transformers.models.gemma2 import modeling_gemma2 as hf_gemma2

from ember.layers.activation import GeluTanhAndMul
from ember.layers.norm import GemmaRMSNorm
from ember.models.config import FULL_ATTENTION, SLIDING_ATTENTION, ModelConfig

S, F = SLIDING_ATTENTION, FULL_ATTENTION
PATTERN_3: dict[str, Any] = {"sliding_window_pattern": 3}  # read from **kwargs only


def test_gemma2_hub_config_without_layer_types() -> None:
    # gemma-2-9b's config.json (trimmed): no layer_types, both activation keys.
    raw: dict[str, Any] = {
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        "hidden_size": 3584,
        "intermediate_size": 14336,
        "num_hidden_layers": 4,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 256,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": 50.0,
        "vocab_size": 256000,
    }
    cfg = ModelConfig.from_dict(raw)
    assert cfg.layer_types == [S, F, S, F]
    assert [cfg.layer_sliding_window(i) for i in range(4)] == [4096, None, 4096, None]
    assert cfg.tie_word_embeddings and cfg.max_position_embeddings == 8192
    assert cfg.attn_logit_softcapping == 50.0 and cfg.final_logit_softcapping == 30.0
    assert cfg.query_pre_attn_scalar == 256.0 and cfg.rope_local_theta is None


def test_gemma3_multimodal_config_nests_the_text_model() -> None:
    # gemma-3-4b-it's config.json (trimmed): the text part leaves most keys to defaults.
    raw: dict[str, Any] = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "eos_token_id": [1, 106],
        "torch_dtype": "bfloat16",
        "text_config": {
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "model_type": "gemma3_text",
            "num_hidden_layers": 12,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "sliding_window": 1024,
        },
        "vision_config": {"hidden_size": 1152, "model_type": "siglip_vision_model"},
    }
    cfg = ModelConfig.from_dict(raw)
    assert cfg.architecture == "Gemma3ForConditionalGeneration"
    assert cfg.model_type == "gemma3_text"
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (8, 4, 256)
    assert cfg.vocab_size == 262208 and cfg.max_position_embeddings == 131072
    assert cfg.eos_token_ids == [1, 106] and cfg.dtype == "bfloat16"
    assert cfg.layer_types == ([S] * 5 + [F]) * 2
    assert cfg.rope_theta == 1e6 and cfg.rope_local_theta == 1e4
    assert cfg.rope_scaling == {"factor": 8.0, "rope_type": "linear"}
    assert cfg.attn_logit_softcapping is None and cfg.final_logit_softcapping is None


def test_gemma3_rope_per_layer_type_as_transformers5_writes_it() -> None:
    hf = transformers.Gemma3TextConfig(
        num_hidden_layers=3,
        **PATTERN_3,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 5e5},
            "sliding_attention": {"rope_type": "default", "rope_theta": 123.0},
        },
    )
    cfg = ModelConfig.from_dict({**hf.to_dict(), "architectures": ["Gemma3ForCausalLM"]})
    assert cfg.layer_types == [S, S, F]
    assert cfg.rope_theta == 5e5 and cfg.rope_local_theta == 123.0
    assert cfg.rope_scaling == {"rope_type": "linear", "factor": 4.0}


def test_gemma_norm_and_geglu_match_transformers() -> None:
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        x = (3 * torch.randn(5, 64, generator=gen)).to(dtype)
        res = torch.randn(5, 64, generator=gen).to(dtype)
        w = 0.3 * torch.randn(64, generator=gen)
        ours = GemmaRMSNorm(64, 1e-6).to(dtype)
        theirs = hf_gemma2.Gemma2RMSNorm(64, 1e-6).to(dtype)
        with torch.no_grad():
            ours.weight.copy_(w)
            theirs.weight.copy_(w)
            assert torch.equal(ours(x), theirs(x))
            normed, new_res = ours(x, res)
            assert torch.equal(new_res, x + res) and torch.equal(normed, theirs(x + res))
    gate, up = torch.randn(2, 7, 32, generator=gen)
    want = transformers.activations.ACT2FN["gelu_pytorch_tanh"](gate) * up
    assert torch.equal(GeluTanhAndMul()(torch.cat([gate, up], dim=-1)), want)
