"""Norm, rotary and activation layers against the transformers implementations."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama import modeling_llama as hf_llama

from ember.errors import ModelLoadError
from ember.layers.activation import SiluAndMul
from ember.layers.norm import RMSNorm
from ember.layers.rope_scaling import rope_frequencies, rope_inv_freq
from ember.layers.rotary import RotaryEmbedding

ROPES: list[dict[str, Any]] = [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
    {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
        "rope_theta": 500000.0,
    },
    # Qwen2.5 / Qwen3's documented long-context setting, at a tiny original context.
    {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 64,
        "rope_theta": 1e6,
    },
]
# YaRN parameter sets that take each branch of transformers' computation.
YARNS: dict[str, dict[str, Any]] = {
    "qwen": {"factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 1e6},
    "betas-untruncated": {
        "factor": 2.5,
        "original_max_position_embeddings": 100,
        "beta_fast": 16,
        "beta_slow": 2.0,
        "truncate": False,
        "rope_theta": 10000.0,
    },
    "mscale-pair": {
        "factor": 40.0,
        "original_max_position_embeddings": 128,
        "mscale": 1.0,
        "mscale_all_dim": 0.707,
        "rope_theta": 10000.0,
    },
    "attention-factor": {
        "factor": 8.0,
        "original_max_position_embeddings": 256,
        "attention_factor": 1.25,
        "rope_theta": 500000.0,
    },
    # Both correction bounds round to pair 0: a ramp of zero width (transformers widens it).
    "empty-ramp": {"factor": 2.0, "original_max_position_embeddings": 4, "rope_theta": 10000.0},
    "factor-below-one": {"factor": 0.5, "original_max_position_embeddings": 64, "rope_theta": 1e4},
}


@pytest.mark.parametrize("rope", ROPES, ids=[r["rope_type"] for r in ROPES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_matches_hf(rope: dict[str, Any], dtype: torch.dtype) -> None:
    head_dim, max_pos = 32, 512
    cfg = transformers.LlamaConfig(
        hidden_size=128,
        num_attention_heads=4,
        max_position_embeddings=max_pos,
        rope_parameters=dict(rope),
    )
    hf_rope = hf_llama.LlamaRotaryEmbedding(cfg)
    scaling = None if rope["rope_type"] == "default" else rope
    ours = RotaryEmbedding(head_dim, max_pos, rope["rope_theta"], scaling)

    gen = torch.Generator().manual_seed(0)
    positions = torch.tensor([0, 1, 5, 63, 64, 65, 200, 511])
    q = torch.randn(len(positions), 4, head_dim, generator=gen).to(dtype)
    k = torch.randn(len(positions), 2, head_dim, generator=gen).to(dtype)
    cos, sin = hf_rope(q, positions[None])
    # HF layout is [batch, heads, tokens, head_dim].
    hf_q, hf_k = hf_llama.apply_rotary_pos_emb(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin
    )
    got_q, got_k = ours(positions, q, k)
    torch.testing.assert_close(got_q, hf_q[0].transpose(0, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(got_k, hf_k[0].transpose(0, 1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", list(YARNS))
def test_yarn_tables_equal_transformers(name: str) -> None:
    """inv_freq and the attention factor as transformers computes them, and the cos/sin its
    rotary module returns (attention factor applied) bit for bit."""
    rope = {"rope_type": "yarn", **YARNS[name]}
    head_dim, max_pos = 32, 512
    cfg = transformers.LlamaConfig(
        hidden_size=128,
        num_attention_heads=4,
        max_position_embeddings=max_pos,
        rope_parameters=dict(rope),
    )
    want_inv_freq, want_factor = ROPE_INIT_FUNCTIONS["yarn"](cfg)
    got = rope_frequencies(head_dim, rope["rope_theta"], rope)
    assert torch.equal(got.inv_freq, want_inv_freq)
    assert got.attention_factor == want_factor

    positions = torch.arange(max_pos)
    cos, sin = hf_llama.LlamaRotaryEmbedding(cfg)(torch.zeros(1), positions[None])
    ours = RotaryEmbedding(head_dim, max_pos, rope["rope_theta"], rope)
    half = head_dim // 2
    assert torch.equal(ours.cos_cache, cos[0, :, :half])
    assert torch.equal(ours.sin_cache, sin[0, :, :half])


@pytest.mark.parametrize("rope_type", ["dynamic", "longrope", "made-up"])
def test_unsupported_rope_type_is_a_load_error(rope_type: str) -> None:
    with pytest.raises(ModelLoadError, match=f"rope_type '{rope_type}' is not supported") as err:
        rope_inv_freq(16, 10000.0, {"rope_type": rope_type, "factor": 4.0})
    assert "supported: default, linear, llama3, yarn" in str(err.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_matches_hf_and_fuses_residual(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    weight = 1 + 0.1 * torch.randn(64, generator=gen)
    hf = hf_llama.LlamaRMSNorm(64, eps=1e-5).to(dtype)
    ours = RMSNorm(64, eps=1e-5).to(dtype)
    with torch.no_grad():
        hf.weight.copy_(weight)
        ours.weight.copy_(weight)
    x = torch.randn(5, 64, generator=gen).to(dtype)
    residual = torch.randn(5, 64, generator=gen).to(dtype)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x), atol=0, rtol=0)
        out, new_residual = ours(x, residual)
        torch.testing.assert_close(new_residual, residual + x, atol=0, rtol=0)
        torch.testing.assert_close(out, hf(residual + x), atol=0, rtol=0)


def test_silu_and_mul() -> None:
    x = torch.randn(3, 2 * 8)
    expected = torch.nn.functional.silu(x[:, :8]) * x[:, 8:]
    torch.testing.assert_close(SiluAndMul()(x), expected)
