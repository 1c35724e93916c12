"""Gemma 2, Gemma 3, Mistral's sliding window, Llama 3.1's long-context rope and Qwen's YaRN
through the offline LLM API: greedy tokens equal transformers' on tiny random models, with
prompts longer than the sliding window and positions past the rope's original context."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember import LLM, SamplingParams
from ember.registry import ModelStore, default_home

from .hf_models import hf_greedy, make_hf_model

# Longer than the sliding window (8) of the tiny Gemma and Mistral configs, and chunked.
PROMPTS = [
    [(i * 37) % 900 + 1 for i in range(40)],
    [5, 17, 42, 99, 7, 3, 250, 11],
    [300, 12, 8, 64, 21, 77, 5, 6, 9, 10, 150, 2, 33, 44, 55, 66, 88, 12, 1],
]


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return ModelStore(default_home()).resolve("tiny").path


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


@pytest.mark.parametrize("arch", ["gemma2", "gemma3", "mistral-window"])
def test_greedy_matches_transformers(arch: str, tiny_dir: Path, tmp_path: Path) -> None:
    hf = make_hf_model(arch, tiny_dir, tmp_path)
    llm = LLM(str(tmp_path), dtype="float32", device="cpu", block_size=4, max_num_batched_tokens=16)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], greedy(16))
    for prompt, out in zip(PROMPTS, outs, strict=True):
        assert out.outputs[0].token_ids == hf_greedy(hf, prompt, 16), arch


def test_llama31_rope_past_the_original_context(tiny_dir: Path, tmp_path: Path) -> None:
    # The tiny llama3 config scales rope from original_max_position_embeddings=64; a 100-token
    # prompt plus 20 tokens runs well past it, at a --max-model-len above the default.
    hf = make_hf_model("llama3", tiny_dir, tmp_path)
    llm = LLM(str(tmp_path), dtype="float32", device="cpu", block_size=4, max_model_len=400)
    assert llm.engine.max_model_len == 400
    prompt = [(i * 53) % 900 + 1 for i in range(100)]
    out = llm.generate({"prompt_token_ids": prompt}, greedy(20))[0]
    assert out.outputs[0].token_ids == hf_greedy(hf, prompt, 20)


def test_qwen_yarn_past_max_position_embeddings(tiny_dir: Path, tmp_path: Path) -> None:
    # YaRN factor 4 over max_position_embeddings=64: the model serves 256 tokens (vLLM's
    # derivation), and a 100-token prompt plus 20 runs past 64.
    hf = make_hf_model("qwen2-yarn", tiny_dir, tmp_path)
    llm = LLM(str(tmp_path), dtype="float32", device="cpu", block_size=4, max_model_len=10**6)
    assert llm.engine.max_model_len == 256
    prompt = [(i * 53) % 900 + 1 for i in range(100)]
    out = llm.generate({"prompt_token_ids": prompt}, greedy(20))[0]
    assert out.outputs[0].token_ids == hf_greedy(hf, prompt, 20)
