"""ember's Llama-family model against transformers on the same tiny random weights: logits of a
one-step prefill, of chunked prefill + token-by-token decode through the paged cache, and of
mixed batches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from torch import nn

from ember.models import CausalLM, load_model

from .helpers import PARITY_SHAPE, PagedCache, randomize_

COMMON: dict[str, Any] = dict(PARITY_SHAPE)

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
    "rope_theta": 10000.0,
}


def _llama() -> nn.Module:
    cfg = transformers.LlamaConfig(**COMMON, rope_parameters=LLAMA3_ROPE)
    return transformers.LlamaForCausalLM(cfg)


def _llama_linear_rope_bias() -> nn.Module:
    rope = {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}
    cfg = transformers.LlamaConfig(
        **COMMON, rope_parameters=rope, attention_bias=True, mlp_bias=True
    )
    return transformers.LlamaForCausalLM(cfg)


def _qwen2_tied() -> nn.Module:
    cfg = transformers.Qwen2Config(
        **COMMON, tie_word_embeddings=True, rope_parameters={"rope_theta": 1e6}
    )
    return transformers.Qwen2ForCausalLM(cfg)


def _qwen3() -> nn.Module:
    cfg = transformers.Qwen3Config(**COMMON, head_dim=32)
    return transformers.Qwen3ForCausalLM(cfg)


def _mistral_window() -> nn.Module:
    # A window shorter than the prompt, so masking by window is exercised.
    cfg = transformers.MistralConfig(**COMMON, head_dim=24, sliding_window=6)
    return transformers.MistralForCausalLM(cfg)


# YaRN over an original context shorter than the prompts, so that the interpolated pairs, the
# ramp and the attention factor all shape the logits.
def _qwen2_yarn() -> nn.Module:
    rope = {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 16,
        "rope_theta": 1e6,
    }
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**COMMON, rope_parameters=rope))


def _qwen3_yarn() -> nn.Module:
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8}
    cfg = transformers.Qwen3Config(**COMMON, head_dim=32, rope_parameters=rope)
    return transformers.Qwen3ForCausalLM(cfg)


def _llama_yarn() -> nn.Module:
    rope = {
        "rope_type": "yarn",
        "factor": 3.0,
        "original_max_position_embeddings": 12,
        "beta_fast": 8,
        "beta_slow": 2,
        "truncate": False,
        "rope_theta": 500.0,
    }
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON, rope_parameters=rope))


ARCHS: dict[str, Callable[[], nn.Module]] = {
    "llama3-rope": _llama,
    "llama-linear-rope-bias": _llama_linear_rope_bias,
    "qwen2-tied": _qwen2_tied,
    "qwen3": _qwen3,
    "mistral-window": _mistral_window,
    "qwen2-yarn": _qwen2_yarn,
    "qwen3-yarn": _qwen3_yarn,
    "llama-yarn": _llama_yarn,
}

ATOL = 1e-4


@pytest.fixture(scope="module", params=list(ARCHS))
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[nn.Module, CausalLM]:
    torch.manual_seed(0)
    hf = ARCHS[request.param]().float().eval()
    randomize_(hf, seed=1)
    path: Path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(str(path))  # type: ignore[operator]
    model = load_model(path, torch.float32, torch.device("cpu"))
    return hf, model


def _hf_logits(hf: nn.Module, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([tokens])).logits[0].float()


def _prompt(n: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, COMMON["vocab_size"], (n,), generator=gen).tolist()


def _run(
    model: CausalLM, cache: PagedCache, chunks: list[tuple[int, list[int]]]
) -> list[torch.Tensor]:
    """One engine step; returns the logits of each chunk's tokens."""
    input_ids, positions, meta = cache.step(chunks)
    with torch.inference_mode():
        hidden = model(input_ids, positions, cache.kv_caches, meta)
        logits = model.compute_logits(hidden)
    assert logits.dtype == torch.float32
    starts = meta.query_start_loc_cpu
    return [logits[starts[i] : starts[i + 1]] for i in range(len(chunks))]


def test_prefill_matches_hf(pair: tuple[nn.Module, CausalLM]) -> None:
    hf, model = pair
    tokens = _prompt(20, seed=2)
    cache = PagedCache(model.config, block_size=4)
    (got,) = _run(model, cache, [(0, tokens)])
    torch.testing.assert_close(got, _hf_logits(hf, tokens), atol=ATOL, rtol=0)


def test_chunked_prefill_and_decode_match_hf(pair: tuple[nn.Module, CausalLM]) -> None:
    hf, model = pair
    tokens = _prompt(22, seed=3)
    cache = PagedCache(model.config, block_size=4, seed=5)
    got: list[torch.Tensor] = []
    pos = 0
    for n in [7, 5, 1, 1, 3, 1, 1, 1, 1, 1]:
        got += _run(model, cache, [(0, tokens[pos : pos + n])])
        pos += n
    torch.testing.assert_close(torch.cat(got), _hf_logits(hf, tokens), atol=ATOL, rtol=0)


def test_mixed_batches_match_hf(pair: tuple[nn.Module, CausalLM]) -> None:
    hf, model = pair
    prompts = {0: _prompt(15, seed=4), 1: _prompt(9, seed=5), 2: _prompt(12, seed=6)}
    schedule = [
        [(0, 10), (1, 3)],
        [(0, 1), (1, 6), (2, 8)],
        [(0, 4), (2, 1)],
        [(2, 3)],
    ]
    cache = PagedCache(model.config, block_size=4, seed=7)
    done = dict.fromkeys(prompts, 0)
    got: dict[int, list[torch.Tensor]] = {s: [] for s in prompts}
    for step in schedule:
        chunks = [(s, prompts[s][done[s] : done[s] + n]) for s, n in step]
        for (s, n), out in zip(step, _run(model, cache, chunks), strict=True):
            got[s].append(out)
            done[s] += n
    for s, tokens in prompts.items():
        assert done[s] == len(tokens)
        torch.testing.assert_close(torch.cat(got[s]), _hf_logits(hf, tokens), atol=ATOL, rtol=0)


def test_sharded_checkpoint_loads_the_same(tmp_path: Path) -> None:
    torch.manual_seed(0)
    hf = _llama().float().eval()
    randomize_(hf, seed=9)
    hf.save_pretrained(str(tmp_path), max_shard_size="40KB")  # type: ignore[operator]
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    model = load_model(tmp_path, torch.float32, torch.device("cpu"))
    tokens = _prompt(12, seed=10)
    (got,) = _run(model, PagedCache(model.config, block_size=4), [(0, tokens)])
    torch.testing.assert_close(got, _hf_logits(hf, tokens), atol=ATOL, rtol=0)
