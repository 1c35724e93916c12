"""Fixtures: a model store in a temp home and hand-made model folders inside it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from ember.registry import ModelStore


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "home")


def write_fake_model(path: Path, config: dict[str, Any] | None = None) -> Path:
    """A folder shaped like a Hugging Face checkpoint, with 1,500,000 bf16 parameters."""
    path.mkdir(parents=True, exist_ok=True)
    base = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "torch_dtype": "bfloat16"}
    (path / "config.json").write_text(json.dumps({**base, **(config or {})}), encoding="utf-8")
    tensors = {
        "model.embed_tokens.weight": torch.zeros(1000, 1000, dtype=torch.bfloat16),
        "lm_head.weight": torch.zeros(500, 1000, dtype=torch.bfloat16),
    }
    save_file(tensors, str(path / "model.safetensors"))
    (path / "tokenizer.json").write_text("{}", encoding="utf-8")
    return path


@pytest.fixture
def make_model(store: ModelStore) -> Callable[..., Path]:
    """Factory: put a fake model into the store under a name like 'qwen/qwen2.5:0.5b'."""

    def make(name: str, config: dict[str, Any] | None = None) -> Path:
        return write_fake_model(store.path_for(name), config)

    return make


@pytest.fixture
def fake_model_dir(tmp_path: Path) -> Path:
    """A checkpoint folder outside the store."""
    return write_fake_model(tmp_path / "checkpoints" / "Qwen2.5-Fake")
