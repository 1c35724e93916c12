"""--kv-cache-dtype fp8: the cache holds one byte a value (twice the tokens of a bf16 cache in the
same memory), predicts what the full-precision cache predicts, and works with prefix caching and
preemption; a bad value is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ember import LLM, SamplingParams
from ember.config import ConfigError, ServeConfig
from ember.errors import InvalidRequestError
from ember.registry import ModelStore, default_home

PROMPTS = [[5, 17, 42, 99, 7, 3, 250, 11], [300, 12, 8, 64, 21, 77, 5, 6, 9, 10, 150, 2], [9, 9]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return ModelStore(default_home()).resolve("tiny").path


def tokens(llm: LLM, prompts: list[list[int]]) -> list[list[int]]:
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY)
    return [list(o.outputs[0].token_ids) for o in outs]


@pytest.mark.parametrize(
    ("name", "dtype"), [("fp8", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)]
)
def test_fp8_cache_holds_twice_the_tokens_and_serves_the_same(
    tiny_dir: Path, name: str, dtype: torch.dtype
) -> None:
    full = LLM(str(tiny_dir), dtype="bfloat16", device="cpu", kv_cache_memory_gb=0.01)
    fp8 = LLM(
        str(tiny_dir), dtype="bfloat16", device="cpu", kv_cache_memory_gb=0.01, kv_cache_dtype=name
    )
    k_cache, v_cache = fp8.engine.core.kv_caches[0]
    assert k_cache.dtype == v_cache.dtype == dtype
    assert fp8.engine.core.kv.num_blocks == 2 * full.engine.core.kv.num_blocks
    # Close to the full-precision cache: the same next token, at nearly the same logprob (long
    # greedy runs of a random-weight model part ways at near-ties).
    first = SamplingParams(temperature=0.0, max_tokens=1, logprobs=1)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    for a, b in zip(fp8.generate(prompts, first), full.generate(prompts, first), strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        token = b.outputs[0].token_ids[0]
        assert a.outputs[0].logprobs is not None and b.outputs[0].logprobs is not None
        got = a.outputs[0].logprobs[0][token].logprob
        want = b.outputs[0].logprobs[0][token].logprob
        assert abs(got - want) < 0.05


def test_fp8_cache_with_prefix_hits_and_preemption(tiny_dir: Path) -> None:
    prompts = [[i + 1] * 10 for i in range(6)]
    roomy = LLM(str(tiny_dir), dtype="float32", device="cpu", kv_cache_dtype="fp8", block_size=4)
    expected = tokens(roomy, prompts)
    again = roomy.generate({"prompt_token_ids": prompts[0]}, GREEDY)[0]
    assert again.num_cached_tokens >= 8 and list(again.outputs[0].token_ids) == expected[0]
    small = LLM(
        str(tiny_dir),
        dtype="float32",
        device="cpu",
        kv_cache_dtype="fp8",
        block_size=4,
        num_kv_blocks=16,
    )
    assert tokens(small, prompts) == expected
    core = small.engine.core
    assert core.scheduler.num_preemptions > 0 and core.kv.num_used_blocks == 0


def test_bad_kv_cache_dtype(tiny_dir: Path) -> None:
    with pytest.raises(InvalidRequestError, match="kv_cache_dtype must be auto, fp8"):
        LLM(str(tiny_dir), device="cpu", kv_cache_dtype="int4")
    with pytest.raises(ConfigError, match="--kv-cache-dtype"):
        ServeConfig.from_sources({"kv_cache_dtype": "fp4"}, {})
    env = ServeConfig.from_sources({}, {"EMBER_KV_CACHE_DTYPE": "fp8"})
    assert env.engine_args("/m", "m").kv_cache_dtype == "fp8"
    assert ServeConfig.from_sources({}, {}).engine_args("/m", "m").kv_cache_dtype == "auto"
