"""Building a model for the loader: modules on the meta device, parameters in one allocation,
computed buffers filled in afterwards (beside the stream, in load_model)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from torch import nn

from ember.layers.rotary import RotaryEmbedding
from ember.models import ModelConfig, load_model
from ember.models.build import ALIGNMENT, build_model, materialize_buffers, place_parameters
from tests.loader.helpers import tiny_llama

from .helpers import TINY_LLAMA

CPU = torch.device("cpu")


def _config(**changes: Any) -> ModelConfig:
    raw = transformers.LlamaConfig(
        **TINY_LLAMA,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
        **changes,
    ).to_dict()
    raw["architectures"] = ["LlamaForCausalLM"]
    return ModelConfig.from_dict(raw, source="test")


def test_parameters_share_one_aligned_allocation_and_the_droppable_head_its_own() -> None:
    model = build_model(_config(tie_word_embeddings=False), torch.bfloat16, CPU)
    params = dict(model.named_parameters())
    assert all(not p.is_meta and p.device == CPU for p in params.values())
    assert {p.dtype for p in params.values()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32  # restored after building
    head = params.pop("lm_head.weight")
    storages = {p.untyped_storage().data_ptr() for p in params.values()}
    assert len(storages) == 1  # one allocation for everything but the head
    assert head.untyped_storage().data_ptr() not in storages
    base = storages.pop()  # on CUDA 512-byte aligned; each parameter ALIGNMENT bytes from it
    assert all((p.data_ptr() - base) % ALIGNMENT == 0 for p in params.values())
    # No two parameters overlap.
    spans = sorted(
        (p.data_ptr(), p.data_ptr() + p.numel() * p.element_size()) for p in params.values()
    )
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))


def test_tied_embeddings_stay_one_parameter() -> None:
    model = build_model(_config(tie_word_embeddings=True), torch.float32, CPU)
    assert model.get_submodule("lm_head").weight is model.get_submodule("model.embed_tokens").weight
    assert model.droppable_parameters() == ()


def test_rotary_tables_wait_for_materialize_and_match_a_direct_build() -> None:
    config = _config()
    model = build_model(config, torch.float32, CPU)
    rotary = next(m for m in model.modules() if isinstance(m, RotaryEmbedding))
    assert rotary.cos_cache.is_meta and rotary.sin_cache.is_meta
    materialize_buffers(model, CPU)
    direct = RotaryEmbedding(
        config.head_dim, config.max_position_embeddings, config.rope_theta, config.rope_scaling
    )
    assert torch.equal(rotary.cos_cache, direct.cos_cache)
    assert torch.equal(rotary.sin_cache, direct.sin_cache)
    assert rotary.cos_cache.dtype == torch.float32
    assert not any(k.endswith("_cache") for k in model.state_dict())  # still not persistent
    assert not any(b.is_meta for b in model.buffers())


def test_a_meta_buffer_without_a_way_to_compute_it_is_an_error() -> None:
    class Opaque(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            with torch.device("meta"):
                self.table = nn.Buffer(torch.ones(3))

    with pytest.raises(TypeError, match=r"Opaque has buffers on the meta device"):
        materialize_buffers(nn.Sequential(Opaque()), CPU)


def test_place_parameters_leaves_real_parameters_alone() -> None:
    layer = nn.Linear(4, 4)
    before = layer.weight
    assert place_parameters(layer, CPU) is None
    assert layer.weight is before


def test_a_failing_buffer_fill_fails_the_load_and_skips_the_warm_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_llama(tmp_path)

    def broken(self: RotaryEmbedding, device: torch.device) -> None:
        raise RuntimeError("no tables today")

    monkeypatch.setattr(RotaryEmbedding, "materialize_buffers", broken)
    warmed: list[bool] = []
    with pytest.raises(RuntimeError, match="no tables today"):
        load_model(tmp_path, torch.float32, CPU, alongside=lambda m: warmed.append(True))
    assert warmed == []


_BUILD_EACH = """
import json, sys
import torch
from ember.models.build import build_model
from ember.models.config import ModelConfig
from ember.models.registry import get_model_class
for raw in json.loads(sys.argv[1]):
    config = ModelConfig.from_dict(raw, source="test")
    get_model_class(config)  # its module imported, as the loader has by then
    build_model(config, torch.bfloat16, torch.device("cpu"))
print(json.dumps(sorted(m for m in ("sympy",) if m in sys.modules)))
"""


def test_building_on_meta_runs_no_python_meta_kernels() -> None:
    """arange, cos and friends on the meta device run Python meta kernels whose first use
    imports sympy and torch's decompositions: 1 s here, 5 s on the GPU machine, before the first
    byte of weights moves. Every architecture builds without them."""
    import json
    import subprocess
    import sys

    common = TINY_LLAMA
    configs = [
        transformers.LlamaConfig(**common).to_dict() | {"architectures": ["LlamaForCausalLM"]},
        transformers.Qwen2Config(**common).to_dict() | {"architectures": ["Qwen2ForCausalLM"]},
        transformers.Gemma2Config(**common).to_dict() | {"architectures": ["Gemma2ForCausalLM"]},
        transformers.Gemma3TextConfig(**common).to_dict()
        | {"architectures": ["Gemma3ForCausalLM"]},
    ]
    out = subprocess.run(
        [sys.executable, "-c", _BUILD_EACH, json.dumps(configs)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
