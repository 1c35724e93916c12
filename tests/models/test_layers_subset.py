"""The KV budget's measuring pass runs a few layers only (EngineCore._cuda_kv_budget): which
layers (ModelConfig.memory_sample_layers), and CausalLM.layers_subset, which swaps the stack for
the duration of a pass and always puts it back."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers

from ember.models import ModelConfig
from ember.models.build import build_model, materialize_buffers

from .helpers import TINY_LLAMA, PagedCache, randomize_

CPU = torch.device("cpu")


def _config(**changes: Any) -> ModelConfig:
    raw = transformers.LlamaConfig(**{**TINY_LLAMA, **changes}).to_dict()
    raw["architectures"] = ["LlamaForCausalLM"]
    return ModelConfig.from_dict(raw, source="test")


def test_sample_layers_cover_both_first_layers_and_each_attention_kind() -> None:
    assert _config(num_hidden_layers=8).memory_sample_layers() == [0, 1]
    assert _config(num_hidden_layers=1).memory_sample_layers() == [0]
    gemma3_like = ["sliding_attention"] * 5 + ["full_attention"]
    config = _config(num_hidden_layers=12, layer_types=gemma3_like * 2, sliding_window=8)
    assert config.memory_sample_layers() == [0, 1, 5]
    config = _config(num_hidden_layers=4, layer_types=["full_attention", "full_attention", "sliding_attention", "full_attention"], sliding_window=8)  # fmt: skip
    assert config.memory_sample_layers() == [0, 1, 2]


def test_layers_subset_runs_the_chosen_layers_and_restores_the_stack() -> None:
    config = _config(num_hidden_layers=4)
    model = build_model(config, torch.float32, CPU)
    materialize_buffers(model, CPU)
    randomize_(model, seed=1)
    full_stack = model.model.layers
    names = [n for n, _ in model.named_parameters()]
    prompt = [3, 9, 27, 11, 5]

    def forward(layers: int) -> torch.Tensor:
        cache = PagedCache(config)
        cache.kv_caches = cache.kv_caches[:layers]
        ids, positions, meta = cache.step([(0, prompt)])
        return model(ids, positions, cache.kv_caches, meta)

    whole = forward(4)
    with model.layers_subset([0, 1, 2, 3]):
        assert torch.equal(forward(4), whole)
    with model.layers_subset([0, 2]):
        assert list(model.model.layers) == [full_stack[0], full_stack[2]]
        part = forward(2)
        with pytest.raises(ValueError):  # one cache pair a layer run, no more
            forward(4)
    assert part.shape == whole.shape and not torch.equal(part, whole)
    assert model.model.layers is full_stack
    with pytest.raises(RuntimeError), model.layers_subset([1]):
        raise RuntimeError("a failed pass")
    assert model.model.layers is full_stack
    assert [n for n, _ in model.named_parameters()] == names
    assert torch.equal(forward(4), whole)
