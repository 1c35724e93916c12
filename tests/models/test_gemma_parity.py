"""ember's Gemma 2 and Gemma 3 against transformers on the same tiny random weights: prompts
longer than the sliding window, in one step, chunked with token-by-token decode, and batched;
Gemma 3 also as the text part of a Gemma3ForConditionalGeneration checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from torch import nn

from ember.models import CausalLM, load_model

from .helpers import PagedCache, gemma3_multimodal, randomize_

COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 24,
    "vocab_size": 256,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5,
    "sliding_window": 6,
    "query_pre_attn_scalar": 20,
}

# Not a keyword of Gemma3TextConfig's signature: only read from **kwargs.
PATTERN_3: dict[str, Any] = {"sliding_window_pattern": 3}

GEMMA3_ROPE = {
    "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e5},
    "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
}


def _gemma2() -> nn.Module:
    # Small caps so that both softcaps bend the values they see.
    cfg = transformers.Gemma2Config(
        **COMMON, attn_logit_softcapping=3.0, final_logit_softcapping=8.0
    )
    return transformers.Gemma2ForCausalLM(cfg)


def _gemma3() -> nn.Module:
    # Pattern 3: layers 0, 1 slide, 2 is global, 3 slides.
    cfg = transformers.Gemma3TextConfig(**COMMON, **PATTERN_3, rope_parameters=GEMMA3_ROPE)
    return transformers.Gemma3ForCausalLM(cfg)


def _gemma3_multimodal() -> nn.Module:
    return gemma3_multimodal({**COMMON, "vocab_size": 260, "rope_parameters": GEMMA3_ROPE})


ARCHS: dict[str, Callable[[], nn.Module]] = {
    "gemma2": _gemma2,
    "gemma3": _gemma3,
    "gemma3-multimodal": _gemma3_multimodal,
}

ATOL = 1e-4


@pytest.fixture(scope="module", params=list(ARCHS))
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[nn.Module, CausalLM]:
    torch.manual_seed(0)
    hf = ARCHS[request.param]().float().eval()
    randomize_(hf, seed=1)
    # (1 + weight) norms: randomize_ set them around 1, so shift them around 0 as trained
    # checkpoints store them.
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "norm" in name and "vision" not in name:
                param.sub_(1.0)
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
    input_ids, positions, meta = cache.step(chunks)
    with torch.inference_mode():
        logits = model.compute_logits(model(input_ids, positions, cache.kv_caches, meta))
    starts = meta.query_start_loc_cpu
    return [logits[starts[i] : starts[i + 1]] for i in range(len(chunks))]


def test_prefill_longer_than_the_window_matches_hf(pair: tuple[nn.Module, CausalLM]) -> None:
    hf, model = pair
    tokens = _prompt(30, seed=2)
    (got,) = _run(model, PagedCache(model.config, block_size=4), [(0, tokens)])
    want = _hf_logits(hf, tokens)
    assert want.std() > 0.1  # not flattened into a constant by the softcap
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_chunked_prefill_and_decode_match_hf(pair: tuple[nn.Module, CausalLM]) -> None:
    hf, model = pair
    tokens = _prompt(26, seed=3)
    cache = PagedCache(model.config, block_size=4, seed=5)
    got: list[torch.Tensor] = []
    pos = 0
    for n in [9, 5, 1, 1, 3, 1, 1, 1, 1, 1, 1, 1]:
        got += _run(model, cache, [(0, tokens[pos : pos + n])])
        pos += n
    torch.testing.assert_close(torch.cat(got), _hf_logits(hf, tokens), atol=ATOL, rtol=0)


def test_mixed_batch_matches_hf(pair: tuple[nn.Module, CausalLM]) -> None:
    hf, model = pair
    prompts = {0: _prompt(16, seed=4), 1: _prompt(11, seed=5)}
    cache = PagedCache(model.config, block_size=4, seed=7)
    first = _run(model, cache, [(0, prompts[0][:10]), (1, prompts[1][:3])])
    second = _run(model, cache, [(0, prompts[0][10:]), (1, prompts[1][3:])])
    for s in prompts:
        got = torch.cat([first[s], second[s]])
        torch.testing.assert_close(got, _hf_logits(hf, prompts[s]), atol=ATOL, rtol=0)
