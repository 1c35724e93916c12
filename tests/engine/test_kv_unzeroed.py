"""On CUDA the KV cache is not zeroed at start (only block 0 is): no step may let a slot that
was never written reach an output. Here the CPU engine runs on a cache filled with NaN outside
block 0 and must give the same tokens as on a zeroed one (gpu_check's engine section poisons the
CUDA caches the same way for the Triton kernels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ember import LLM, SamplingParams
from ember.layers.metadata import allocate_kv_cache
from ember.registry import ModelStore, default_home

from .hf_models import make_hf_model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn])
def test_unzeroed_cache_zeroes_block_zero_only(dtype: torch.dtype) -> None:
    shape = (5, 4, 2, 8)
    caches = allocate_kv_cache(3, shape, dtype, torch.device("cpu"), zero=False)
    assert len(caches) == 3
    for k, v in caches:
        for t in (k, v):
            assert t.shape == shape and t.dtype == dtype
            assert not t[0].float().any()
    for k, v in allocate_kv_cache(2, shape, dtype, torch.device("cpu"), zero=True):
        assert not k.float().any() and not v.float().any()


def poison_unwritten_kv(llm: LLM) -> None:
    """Forget the prefix cache and fill every block but block 0 with NaN (the engine is idle)."""
    core = llm.engine.core
    core.kv.reset_prefix_cache()
    for k, v in core.kv_caches:
        k[1:].fill_(float("nan"))
        v[1:].fill_(float("nan"))


def _run(llm: LLM, prompts: list[list[int]]) -> list[list[int]]:
    greedy = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    sampled = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=10, seed=3, ignore_eos=True)
    batch: list[Any] = [{"prompt_token_ids": p} for p in prompts]
    got = [o.outputs[0].token_ids for o in llm.generate(batch, greedy)]
    # The same prompts again: prefix-cache hits, then a sampled batch of mixed lengths.
    got += [o.outputs[0].token_ids for o in llm.generate(batch, greedy)]
    got += [o.outputs[0].token_ids for o in llm.generate(batch[::-1], sampled)]
    return got


@pytest.mark.parametrize("arch", ["llama3", "gemma2"])
def test_nan_outside_written_slots_never_reaches_the_tokens(arch: str, tmp_path: Path) -> None:
    tiny = ModelStore(default_home()).resolve("tiny").path
    make_hf_model(arch, tiny, tmp_path)
    long_prompt = [(i * 37) % 500 + 1 for i in range(45)]
    prompts = [long_prompt, [5, 17, 42, 99, 7, 3, 250, 11], [9, 9, 9], long_prompt[:13]]
    kw: dict[str, Any] = {
        "dtype": "float32",
        "device": "cpu",
        "block_size": 4,
        "max_num_batched_tokens": 16,  # chunked prefill beside decoding rows
        "max_num_seqs": 3,  # a queue, so requests join a running batch
    }
    clean = _run(LLM(str(tmp_path), **kw), prompts)
    poisoned = LLM(str(tmp_path), **kw)
    poison_unwritten_kv(poisoned)
    assert _run(poisoned, prompts) == clean
