"""YaRN rope in a config.json, as Qwen2.5 and Qwen3 document enabling it, in both config
generations: what ModelConfig keeps, the context length it derives (as vLLM derives
max_model_len), and rope tables equal to what transformers computes from the same config."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from ember.errors import ModelLoadError
from ember.layers.rope_scaling import rope_frequencies
from ember.models.config import ModelConfig, served_context_length

QWEN_YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}


def _qwen(**extra: Any) -> dict[str, Any]:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 256,
        "max_position_embeddings": 32768,
        **extra,
    }


def _same_tables_as_transformers(raw: dict[str, Any], cfg: ModelConfig) -> None:
    hf = transformers.Qwen2Config.from_dict(copy.deepcopy(raw))  # it edits the rope dict
    want_inv_freq, want_factor = ROPE_INIT_FUNCTIONS["yarn"](hf)
    got = rope_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    assert torch.equal(got.inv_freq, want_inv_freq)
    assert got.attention_factor == want_factor


LEGACY_TYPE_KEY = {"type" if k == "rope_type" else k: v for k, v in QWEN_YARN.items()}
SHAPES: dict[str, dict[str, Any]] = {
    "rope_scaling": {"rope_theta": 1e6, "rope_scaling": QWEN_YARN},
    "rope_scaling-type-key": {"rope_theta": 1e6, "rope_scaling": LEGACY_TYPE_KEY},
    "rope_parameters": {"rope_parameters": {**QWEN_YARN, "rope_theta": 1e6}},
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_qwen_documented_yarn(shape: str) -> None:
    raw = _qwen(**SHAPES[shape])
    cfg = ModelConfig.from_dict(raw)
    assert cfg.rope_theta == 1e6
    assert cfg.rope_scaling == QWEN_YARN
    # max_position_embeddings stays 32768; the context is the original one times the factor.
    assert cfg.max_context_len == 131072
    _same_tables_as_transformers(raw, cfg)


@pytest.mark.parametrize(
    ("scaling", "top", "original", "factor"),
    [
        # No original context: max_position_embeddings, as transformers' standardization sets it.
        ({"rope_type": "yarn", "factor": 2.0}, None, 4096, 2.0),
        # A null factor: max_position_embeddings / original.
        (
            {"rope_type": "yarn", "factor": None, "original_max_position_embeddings": 1024},
            None,
            1024,
            4.0,
        ),
        # A top-level original_max_position_embeddings (Phi-3's place) wins over the dict's.
        (
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},
            2048,
            2048,
            4.0,
        ),
    ],
)
def test_missing_values_are_filled_as_transformers_fills_them(
    scaling: dict[str, Any], top: int | None, original: int, factor: float
) -> None:
    raw = _qwen(max_position_embeddings=4096, rope_scaling=scaling)
    if top is not None:
        raw["original_max_position_embeddings"] = top
    cfg = ModelConfig.from_dict(raw)
    assert cfg.rope_scaling is not None
    assert cfg.rope_scaling["original_max_position_embeddings"] == original
    assert cfg.rope_scaling["factor"] == factor
    assert cfg.max_context_len == int(original * factor)
    _same_tables_as_transformers(raw, cfg)


def test_max_context_len_follows_vllm() -> None:
    def context(model_type: str = "llama", **extra: Any) -> int:
        raw = _qwen(model_type=model_type, max_position_embeddings=8192, **extra)
        return ModelConfig.from_dict(raw).max_context_len

    assert context() == 8192
    assert context(rope_scaling={"rope_type": "linear", "factor": 2.0}) == 16384
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}
    assert context(rope_scaling={**llama3, "high_freq_factor": 4.0}) == 8192
    # Gemma 3's max_position_embeddings is already the scaled length.
    assert context("gemma3_text", rope_scaling={"rope_type": "linear", "factor": 8.0}) == 8192
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1000}
    assert context(rope_scaling=yarn) == 4000


def test_show_reports_the_context_served(tmp_path: Path) -> None:
    """`ember show` and /api/show report the context the engine serves: 4000 for YaRN x4 over
    1000, not config.json's max_position_embeddings; an unbuildable config still shows that."""
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1000}
    (tmp_path / "config.json").write_text(
        json.dumps(_qwen(max_position_embeddings=1000, rope_scaling=yarn))
    )
    assert served_context_length(tmp_path) == 4000
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 77}))
    assert served_context_length(tmp_path) == 77
    (tmp_path / "config.json").write_text("[]")
    assert served_context_length(tmp_path) == 0
    assert served_context_length(tmp_path / "missing") == 0


@pytest.mark.parametrize(
    ("bad", "key"),
    [
        ({"factor": "4"}, "factor"),
        ({"factor": 0}, "factor"),
        ({"original_max_position_embeddings": -1}, "original_max_position_embeddings"),
        ({"beta_fast": "fast"}, "beta_fast"),
        ({"attention_factor": 0.0}, "attention_factor"),
    ],
)
def test_bad_yarn_values_name_the_key(bad: dict[str, Any], key: str) -> None:
    raw = _qwen(rope_scaling={**QWEN_YARN, **bad})
    with pytest.raises(ModelLoadError, match=f"type 'yarn' needs a positive number '{key}'"):
        ModelConfig.from_dict(raw)


def test_missing_yarn_factor_is_an_error() -> None:
    scaling = {"rope_type": "yarn", "original_max_position_embeddings": 1024}
    with pytest.raises(ModelLoadError, match="'factor', got None"):
        ModelConfig.from_dict(_qwen(rope_scaling=scaling))
