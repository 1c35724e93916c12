"""The offline LLM API end to end on CPU: parity with transformers, chunked prefill, preemption,
prefix caching, seeds, stop strings and validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ember import LLM, SamplingParams
from ember.errors import InvalidRequestError
from ember.registry import ModelStore, default_home

from .hf_models import hf_greedy, make_hf_model

PROMPTS = [
    [5, 17, 42, 99, 7, 3, 250, 11],
    [300, 12, 8, 64, 21, 77, 5, 6, 9, 10, 150, 2, 33, 44, 55, 66, 88, 12, 1],
    [9, 9, 9],
]


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return ModelStore(default_home()).resolve("tiny").path


@pytest.fixture(scope="module")
def tiny_llm(tiny_dir: Path) -> LLM:
    return LLM(str(tiny_dir), dtype="float32", device="cpu", max_num_seqs=8)


def greedy(n: int, **kw: Any) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **kw)


def token_prompts(prompts: list[list[int]]) -> list[Any]:
    return [{"prompt_token_ids": p} for p in prompts]


@pytest.mark.parametrize("arch", ["llama3", "qwen2", "qwen3", "mistral"])
def test_greedy_matches_transformers(arch: str, tiny_dir: Path, tmp_path: Path) -> None:
    hf = make_hf_model(arch, tiny_dir, tmp_path)
    llm = LLM(str(tmp_path), dtype="float32", device="cpu", block_size=4)
    outs = llm.generate(token_prompts(PROMPTS), greedy(24))
    for prompt, out in zip(PROMPTS, outs, strict=True):
        assert out.outputs[0].token_ids == hf_greedy(hf, prompt, 24), arch
        assert out.outputs[0].finish_reason == "length"


def test_chunked_prefill_gives_the_same_tokens(tiny_dir: Path) -> None:
    long_prompt = [(i * 37) % 500 + 1 for i in range(70)]
    whole = LLM(str(tiny_dir), dtype="float32", device="cpu", block_size=4)
    chunked = LLM(
        str(tiny_dir), dtype="float32", device="cpu", block_size=4, max_num_batched_tokens=8
    )
    a = whole.generate(token_prompts([long_prompt, PROMPTS[0]]), greedy(12))
    b = chunked.generate(token_prompts([long_prompt, PROMPTS[0]]), greedy(12))
    assert [o.outputs[0].token_ids for o in a] == [o.outputs[0].token_ids for o in b]


def test_preemption_under_a_tiny_kv_cache_loses_nothing(tiny_dir: Path, tiny_llm: LLM) -> None:
    prompts = [[i + 1] * 10 for i in range(6)]
    expected = [
        o.outputs[0].token_ids for o in tiny_llm.generate(token_prompts(prompts), greedy(20))
    ]
    small = LLM(str(tiny_dir), dtype="float32", device="cpu", block_size=4, num_kv_blocks=16)
    outs = small.generate(token_prompts(prompts), greedy(20))
    assert [o.outputs[0].token_ids for o in outs] == expected
    core = small.engine.core
    assert core.scheduler.num_preemptions > 0
    assert core.kv.num_used_blocks == 0


def test_prefix_cache_hit_gives_the_same_output(tiny_llm: LLM) -> None:
    prompt = [(i * 13) % 400 + 1 for i in range(40)]
    first = tiny_llm.generate(token_prompts([prompt]), greedy(8))[0]
    second = tiny_llm.generate(token_prompts([prompt]), greedy(8))[0]
    assert second.num_cached_tokens >= 32
    assert second.outputs[0].token_ids == first.outputs[0].token_ids


def test_seed_reproduces_samples(tiny_llm: LLM) -> None:
    params = SamplingParams(temperature=1.0, seed=1234, max_tokens=16, ignore_eos=True)
    a = tiny_llm.generate("Tell me a story", params)[0].outputs[0].token_ids
    others = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)
    b = tiny_llm.generate(["Tell me a story", "other", "prompts"], [params, others, others])[0]
    assert b.outputs[0].token_ids == a
    c = SamplingParams(temperature=1.0, seed=99, max_tokens=16, ignore_eos=True)
    assert tiny_llm.generate("Tell me a story", c)[0].outputs[0].token_ids != a


def test_stop_strings_cut_exactly(tiny_llm: LLM) -> None:
    full = tiny_llm.generate("Why is the sky blue?", greedy(40))[0].outputs[0].text
    assert len(full) > 12
    stop = full[8:11]
    cut = full.index(stop)
    out = tiny_llm.generate("Why is the sky blue?", greedy(40, stop=[stop]))[0].outputs[0]
    assert out.text == full[:cut]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    kept = tiny_llm.generate(
        "Why is the sky blue?", greedy(40, stop=[stop], include_stop_str_in_output=True)
    )[0].outputs[0]
    assert kept.text == full[: cut + len(stop)]
    assert tiny_llm.engine.core.kv.num_used_blocks == 0


def test_the_stop_tokens_text_is_left_out(tiny_llm: LLM) -> None:
    """A request ended by one of stop_token_ids (or EOS) keeps the token's id but not its text,
    unless include_stop_str_in_output, as vLLM does."""
    tok = tiny_llm.get_tokenizer()
    full = tiny_llm.generate("Why is the sky blue?", greedy(12))[0].outputs[0].token_ids
    stop = full[3]
    upto = full[: full.index(stop) + 1]
    out = tiny_llm.generate("Why is the sky blue?", greedy(12, stop_token_ids=[stop]))[0]
    done = out.outputs[0]
    assert done.token_ids == upto
    assert done.finish_reason == "stop" and done.stop_reason == stop
    assert done.text == tok.decode(upto[:-1])
    kept = tiny_llm.generate(
        "Why is the sky blue?",
        greedy(12, stop_token_ids=[stop], include_stop_str_in_output=True),
    )[0].outputs[0]
    assert kept.text == tok.decode(upto)


def test_stop_strings_wait_for_min_tokens(tiny_llm: LLM) -> None:
    out = tiny_llm.generate("Why is the sky blue?", greedy(40))[0].outputs[0]
    tok = tiny_llm.get_tokenizer()
    first = tok.decode(out.token_ids[:1])
    assert first
    early = tiny_llm.generate("Why is the sky blue?", greedy(40, stop=[first]))[0].outputs[0]
    assert len(early.token_ids) == 1 and early.finish_reason == "stop"
    params = greedy(40, stop=[first], min_tokens=5)
    held = tiny_llm.generate("Why is the sky blue?", params)[0].outputs[0]
    assert len(held.token_ids) > 5
    assert held.token_ids == out.token_ids[: len(held.token_ids)]
    if held.finish_reason == "stop":  # cut at an occurrence that ends past the fifth token
        assert len(tok.decode(held.token_ids[:5])) < len(held.text) + len(first)
    assert tiny_llm.engine.core.kv.num_used_blocks == 0


@pytest.mark.parametrize("arch", ["llama3", "gemma2"])
def test_prompt_logprobs_match_transformers(arch: str, tiny_dir: Path, tmp_path: Path) -> None:
    """vLLM's prompt_logprobs: None for the first token, then each prompt token's logprob and
    rank and the top k, the same whether the prompt runs whole or in chunks, after a prefix
    cache hit, or beside requests without them; nothing held afterwards."""
    import torch

    hf = make_hf_model(arch, tiny_dir, tmp_path)
    prompt = PROMPTS[1]
    with torch.no_grad():
        logits = hf(torch.tensor([prompt])).logits[0].float()
    want = torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(prompt[1:]).unsqueeze(1))
    top = torch.log_softmax(logits, -1)[:-1].topk(3, dim=-1)
    for chunk in (None, 8):
        kw: dict[str, Any] = {"max_num_batched_tokens": chunk} if chunk else {}
        llm = LLM(str(tmp_path), dtype="float32", device="cpu", block_size=4, **kw)
        decode = llm.engine.tokenizer.decode
        for _ in range(2):  # the second finds the prompt in the prefix cache
            params = [greedy(2, prompt_logprobs=3), greedy(2)]
            out, other = llm.generate(token_prompts([prompt, PROMPTS[0]]), params)
            lps = out.prompt_logprobs
            assert lps is not None and lps[0] is None and len(lps) == len(prompt)
            assert other.prompt_logprobs is None
            for j, position in enumerate(lps[1:]):
                token = prompt[j + 1]
                assert position is not None and next(iter(position)) == token  # its own first
                own = position[token]
                assert own.logprob == pytest.approx(float(want[j]), abs=1e-4)
                assert own.decoded_token == decode([token], skip_special_tokens=False)
                top_ids = top.indices[j].tolist()
                if token in top_ids:  # once, with its top-k rank
                    assert len(position) == 3 and own.rank == top_ids.index(token) + 1
                else:  # vLLM's rank: the tokens at least as likely, itself included
                    assert len(position) == 4
                    assert own.rank == int((torch.log_softmax(logits[j], -1) >= want[j]).sum())
                for rank, t in enumerate(top_ids, 1):
                    assert position[t].rank == rank
                    want_top = float(top.values[j][rank - 1])
                    assert position[t].logprob == pytest.approx(want_top, abs=1e-4)
        assert llm.engine.core.kv.num_used_blocks == 0


def test_text_prompt_and_token_prompt_agree(tiny_llm: LLM) -> None:
    text = "Hello there"
    ids = tiny_llm.get_tokenizer().encode(text)
    a = tiny_llm.generate(text, greedy(8))[0]
    b = tiny_llm.generate({"prompt_token_ids": ids}, greedy(8))[0]
    assert a.prompt_token_ids == ids
    assert a.outputs[0].token_ids == b.outputs[0].token_ids
    assert a.outputs[0].text == tiny_llm.get_tokenizer().decode(a.outputs[0].token_ids)


def test_chat_uses_the_template(tiny_llm: LLM) -> None:
    out = tiny_llm.chat([{"role": "user", "content": "hi"}], greedy(4))[0]
    assert len(out.outputs[0].token_ids) == 4


def test_bad_prompts_are_clear_errors(tiny_llm: LLM) -> None:
    with pytest.raises(InvalidRequestError, match="empty"):
        tiny_llm.generate({"prompt_token_ids": []}, greedy(4))
    too_long = [1] * (tiny_llm.engine.max_model_len + 1)
    with pytest.raises(InvalidRequestError, match="context length"):
        tiny_llm.generate({"prompt_token_ids": too_long}, greedy(4))
    with pytest.raises(InvalidRequestError, match="vocabulary"):
        tiny_llm.generate({"prompt_token_ids": [10**9]}, greedy(4))
    assert not tiny_llm.engine.has_unfinished()


def test_max_tokens_none_stops_at_the_context(tiny_dir: Path) -> None:
    llm = LLM(str(tiny_dir), dtype="float32", device="cpu", max_model_len=32)
    out = llm.generate(
        {"prompt_token_ids": [1] * 20}, SamplingParams(max_tokens=None, ignore_eos=True)
    )
    assert len(out[0].outputs[0].token_ids) == 12
    assert out[0].outputs[0].finish_reason == "length"


def test_dummy_weights_need_only_the_config(tiny_dir: Path, tmp_path: Path) -> None:
    import shutil

    for name in (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ):
        shutil.copy(tiny_dir / name, tmp_path / name)
    llm = LLM(str(tmp_path), device="cpu", load_format="dummy")
    out = llm.generate("hello", greedy(5))[0]
    assert len(out.outputs[0].token_ids) == 5


def test_max_model_len_beyond_the_model_is_clamped(tiny_dir: Path) -> None:
    llm = LLM(str(tiny_dir), device="cpu", max_model_len=10**6)
    assert llm.engine.max_model_len == 4096  # the tiny model's max_position_embeddings


def test_the_step_budget_follows_the_device_when_not_given(tiny_llm: LLM) -> None:
    from ember.engine.args import default_batched_tokens

    gib = 2**30
    assert default_batched_tokens(None) == 2048  # the CPU
    assert default_batched_tokens(80 * gib, "NVIDIA H100 80GB HBM3") == 8192
    assert default_batched_tokens(141 * gib, "NVIDIA H200") == 8192
    assert default_batched_tokens(80 * gib, "NVIDIA A100-SXM4-80GB") == 2048
    assert default_batched_tokens(24 * gib, "NVIDIA L4") == 2048
    core = tiny_llm.engine.core
    assert core.max_num_batched_tokens == core.scheduler.max_num_batched_tokens == 2048
