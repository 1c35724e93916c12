"""Which Llama-family layers let the qkv GEMV rotate q and k in its epilogue (ops/
triton_qkv_rotary.py), and what they hand it: the layer's own rotary tables and head counts,
the cache and slots only when there is a cache to store into (not in the profiling run). Layers
that norm q and k before rotary (Qwen3) keep the rotary kernel. No Triton needed."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
import torch
import transformers

from ember.layers.metadata import KVCache
from ember.models import load_model
from ember.models.llama import LlamaDecoderLayer, LlamaForCausalLM

from .helpers import PagedCache, randomize_
from .test_llama_parity import ARCHS


@pytest.mark.parametrize("arch", ["llama3-rope", "qwen2-tied", "qwen3", "mistral-window"])
def test_epilogue_rotary_hands_over_the_layers_rotary_and_cache(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    hf = ARCHS[arch]().float().eval()
    randomize_(hf, seed=1)
    hf.save_pretrained(str(tmp_path))  # type: ignore[operator]
    model = load_model(tmp_path, torch.float32, torch.device("cpu"))
    assert isinstance(model, LlamaForCausalLM)  # Qwen2, Qwen3 and Mistral share its layers
    config = model.config
    cache = PagedCache(config)
    _, positions, meta = cache.step([(0, [5])])
    attn = cast(LlamaDecoderLayer, model.model.layers[0]).self_attn
    got = attn.epilogue_rotary(positions, cache.kv_caches[0], meta)
    if isinstance(hf, transformers.Qwen3ForCausalLM):
        assert got is None  # q_norm and k_norm sit between the projection and rotary
        return
    assert got is not None
    assert (got.num_q_heads, got.num_kv_heads, got.head_dim) == (
        config.num_attention_heads, config.num_key_value_heads, config.head_dim,
    )  # fmt: skip
    assert got.positions is positions and got.cos_cache is attn.rotary.cos_cache
    assert got.cache is cache.kv_caches[0] and got.slot_mapping is meta.slot_mapping
    empty: KVCache = (torch.empty(0), torch.empty(0))  # the profiling run: nothing to store
    bare = attn.epilogue_rotary(positions, empty, meta)
    assert bare is not None and bare.cache is None and bare.slot_mapping is None
