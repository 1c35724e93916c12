from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ember.errors import ModelLoadError
from ember.models.config import FULL_ATTENTION, SLIDING_ATTENTION, ModelConfig

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def _base(**extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 256,
        "max_position_embeddings": 128,
    }
    raw.update(extra)
    return raw


def test_defaults() -> None:
    cfg = ModelConfig.from_dict(_base(eos_token_id=[1, 2], bos_token_id=0, torch_dtype="bfloat16"))
    assert cfg.num_key_value_heads == 4
    assert cfg.head_dim == 16
    assert cfg.rope_theta == 10000.0 and cfg.rope_scaling is None
    assert cfg.sliding_window is None and cfg.layer_types == [FULL_ATTENTION] * 2
    assert cfg.eos_token_ids == [1, 2] and cfg.bos_token_id == 0
    assert cfg.dtype == "bfloat16"
    assert not cfg.attention_bias and not cfg.tie_word_embeddings


def test_rope_transformers5_style() -> None:
    cfg = ModelConfig.from_dict(_base(rope_parameters={**LLAMA3, "rope_theta": 500000.0}))
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling == LLAMA3


def test_rope_legacy_type_key() -> None:
    legacy = {k: v for k, v in LLAMA3.items() if k != "rope_type"} | {"type": "llama3"}
    cfg = ModelConfig.from_dict(_base(rope_theta=500000.0, rope_scaling=legacy))
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling == LLAMA3


def test_default_rope_parameters_mean_no_scaling() -> None:
    cfg = ModelConfig.from_dict(
        _base(rope_parameters={"rope_type": "default", "rope_theta": 1e6}, dtype="float32")
    )
    assert cfg.rope_theta == 1e6 and cfg.rope_scaling is None and cfg.dtype == "float32"


def test_qwen2_bias_and_disabled_sliding_window() -> None:
    cfg = ModelConfig.from_dict(
        _base(
            architectures=["Qwen2ForCausalLM"],
            model_type="qwen2",
            use_sliding_window=False,
            sliding_window=32768,
            tie_word_embeddings=True,
        )
    )
    assert cfg.attention_bias and not cfg.attention_out_bias
    assert cfg.sliding_window is None
    assert cfg.layer_sliding_window(0) is None
    assert cfg.tie_word_embeddings


def test_mistral_sliding_window_all_layers() -> None:
    cfg = ModelConfig.from_dict(_base(model_type="mistral", sliding_window=4096))
    assert cfg.layer_types == [SLIDING_ATTENTION] * 2
    assert cfg.layer_sliding_window(1) == 4096
    null_window = ModelConfig.from_dict(_base(model_type="mistral", sliding_window=None))
    assert null_window.sliding_window is None


def test_qwen_max_window_layers() -> None:
    cfg = ModelConfig.from_dict(
        _base(model_type="qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=1)
    )
    assert [cfg.layer_sliding_window(i) for i in range(2)] == [None, 8]


def test_explicit_head_dim_and_kv_heads() -> None:
    cfg = ModelConfig.from_dict(_base(head_dim=32, num_key_value_heads=2))
    assert cfg.head_dim == 32 and cfg.num_key_value_heads == 2


def test_missing_config_names_the_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no config\.json in"):
        ModelConfig.from_dir(tmp_path)


def test_invalid_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        ModelConfig.from_dir(tmp_path)


def test_missing_key_is_reported(tmp_path: Path) -> None:
    raw = _base()
    del raw["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="hidden_size"):
        ModelConfig.from_dir(tmp_path)


def test_bad_value_is_reported() -> None:
    with pytest.raises(ModelLoadError, match="num_attention_heads"):
        ModelConfig.from_dict(_base(num_attention_heads="four"))
