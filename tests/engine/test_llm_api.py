"""The offline API behaves as vLLM's where users rely on it: argument checks, SamplingParams
normalisation, prompt forms, generation_config defaults, chat options, errors as ValueErrors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ember import LLM, SamplingParams
from ember.engine.args import EngineArgs
from ember.errors import EmberError, InvalidRequestError

from .test_llm import greedy, tiny_dir, tiny_llm

__all__ = ["tiny_dir", "tiny_llm"]  # fixtures, shared with test_llm.py

HI = [{"role": "user", "content": "hi"}]


def cpu_llm(path: Path, **kw: Any) -> LLM:
    return LLM(str(path), dtype="float32", device="cpu", **kw)


# --- SamplingParams --------------------------------------------------------------------------


def test_sampling_params_normalise_as_vllm() -> None:
    sp = SamplingParams(
        logprobs=True,
        prompt_logprobs=True,
        stop=None,
        stop_token_ids=None,
        logit_bias={"5": 1, 7: -2.0},
        seed=-1,
        top_k=-1,
    )
    assert (sp.logprobs, sp.prompt_logprobs) == (1, 1)
    assert (sp.stop, sp.stop_token_ids) == ([], [])
    assert sp.logit_bias == {5: 1.0, 7: -2.0}
    assert sp.seed is None  # -1: random, as vLLM and Ollama
    assert sp.top_k == 0
    assert SamplingParams(logit_bias=None).logit_bias == {}
    assert SamplingParams(logprobs=False).logprobs is None


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"top_k": 2.5}, "top_k must be an integer"),
        ({"top_k": -5}, "top_k must be 0 or -1"),
        ({"logit_bias": {"five": 1.0}}, "logit_bias keys must be token ids"),
        ({"stop": [3]}, "stop must be a string or a list of strings"),
        ({"stop_token_ids": [1.5]}, "stop_token_ids must be an integer"),
        ({"temperature": "0.5"}, "temperature must be a number"),
        ({"max_tokens": 2.0}, "max_tokens must be an integer"),
        ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens must be at least 1"),
    ],
)
def test_sampling_params_reject_wrong_types(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:  # as vLLM: a ValueError
        SamplingParams(**kw)
    assert isinstance(info.value, InvalidRequestError)


def test_clone_is_a_deep_copy() -> None:
    sp = SamplingParams(stop=["x"], temperature=0.5)
    twin = sp.clone()
    twin.stop.append("y")
    assert sp.stop == ["x"]
    assert twin.temperature == 0.5


# --- engine arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"max_num_batched_tokens": 0}, "max_num_batched_tokens"),
        ({"max_num_batched_tokens": -5}, "max_num_batched_tokens"),
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"block_size": 0}, "block_size"),
        ({"num_kv_blocks": 0}, "num_kv_blocks"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"kv_cache_memory_gb": 0.0}, "kv_cache_memory_gb"),
        ({"gpu_memory_utilization": 0.0}, "gpu_memory_utilization"),
        ({"gpu_memory_utilization": 5.0}, "gpu_memory_utilization"),
    ],
)
def test_engine_sizes_must_be_positive(kw: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        EngineArgs(model="unused", **kw)


def test_llm_refuses_a_zero_step_budget_at_once(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"max_num_batched_tokens must be an integer >= 1"):
        cpu_llm(tiny_dir, max_num_batched_tokens=0)


@pytest.mark.timeout(60)
def test_a_scheduler_that_runs_nothing_raises_instead_of_spinning(tiny_dir: Path) -> None:
    llm = cpu_llm(tiny_dir)
    llm.engine.core.scheduler.max_num_batched_tokens = 0  # what validation now forbids
    with pytest.raises(EmberError, match="scheduler ran nothing"):
        llm.generate("hi", greedy(2))
    assert not llm.engine.has_unfinished()


def test_vllm_constructor_arguments(tiny_dir: Path) -> None:
    llm = cpu_llm(
        tiny_dir,
        tokenizer=str(tiny_dir),
        trust_remote_code=True,
        tensor_parallel_size=1,
        disable_log_stats=True,
        revision=None,
        seed=None,  # random, as vLLM
    )
    assert len(llm.generate("hi", greedy(2))[0].outputs[0].token_ids) == 2
    with pytest.raises(TypeError, match="'no_such_arg'"):
        cpu_llm(tiny_dir, no_such_arg=1)
    with pytest.raises(ValueError, match="tensor_parallel_size=2 is not supported"):
        cpu_llm(tiny_dir, tensor_parallel_size=2)
    with pytest.raises(ValueError, match="tokenizer"):
        cpu_llm(tiny_dir, tokenizer="/some/other/tokenizer")


# --- generate --------------------------------------------------------------------------------


def test_logprobs_true_gives_one_top_logprob_and_a_cumulative_sum(tiny_llm: LLM) -> None:
    plain, scored = tiny_llm.generate(["Hello", "World"], [greedy(4), greedy(4, logprobs=True)])
    assert len(plain.outputs[0].token_ids) == 4
    assert plain.outputs[0].logprobs is None and plain.outputs[0].cumulative_logprob is None
    assert plain.prompt_logprobs is None
    out = scored.outputs[0]
    assert out.logprobs is not None and len(out.logprobs) == 4
    for token, position in zip(out.token_ids, out.logprobs, strict=True):
        # greedy: the sampled token is the likeliest, so it is the one top-1 entry
        assert list(position) == [token] and position[token].rank == 1
    total = sum(p[t].logprob for t, p in zip(out.token_ids, out.logprobs, strict=True))
    assert out.cumulative_logprob == pytest.approx(total)


def test_logprobs_are_vllm_shaped_dicts_with_the_sampled_token_ranked(tiny_llm: LLM) -> None:
    """vLLM's SampleLogprobs: per generated token a {token id: Logprob} holding the sampled token
    (first, even outside the top k, with its 1-based rank in the vocabulary) and the top k
    sorted; values are the raw model's log-softmax, whatever the sampling did."""
    from ember import Logprob
    from ember.logprobs import top

    prompt = tiny_llm.get_tokenizer().encode("Hello there")
    sp = SamplingParams(temperature=1.5, seed=3, max_tokens=6, ignore_eos=True, logprobs=3)
    (out,) = tiny_llm.generate([{"prompt_token_ids": prompt}], sp)
    c = out.outputs[0]
    assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids) == 6
    outside = 0
    for token, position in zip(c.token_ids, c.logprobs, strict=True):
        assert all(isinstance(lp, Logprob) for lp in position.values())
        assert next(iter(position)) == token
        ranks = [lp.rank for _, lp in top(position, 3)]
        assert ranks == [1, 2, 3]
        values = [lp.logprob for _, lp in top(position, 3)]
        assert values == sorted(values, reverse=True)
        own = position[token]
        assert own.rank is not None and own.rank >= 1
        assert len(position) == (3 if own.rank <= 3 else 4)
        outside += own.rank > 3
        assert own.decoded_token == tiny_llm.engine.tokenizer.decode(
            [token], skip_special_tokens=False
        )
    assert outside > 0  # temperature 1.5 on random weights samples some unlikely tokens
    total = sum(p[t].logprob for t, p in zip(c.token_ids, c.logprobs, strict=True))
    assert c.cumulative_logprob == pytest.approx(total)
    # The first generated position against the prompt logprobs of prompt + that token (checked
    # against transformers' log-softmax in test_llm.py) at its last position.
    first = c.token_ids[0]
    (ext,) = tiny_llm.generate(
        [{"prompt_token_ids": [*prompt, first]}], greedy(1, prompt_logprobs=3)
    )
    assert ext.prompt_logprobs is not None and ext.prompt_logprobs[0] is None
    direct = ext.prompt_logprobs[-1]
    assert direct is not None
    assert c.logprobs[0][first].logprob == pytest.approx(direct[first].logprob, abs=1e-4)
    assert c.logprobs[0][first].rank == direct[first].rank
    got = {t: lp.logprob for t, lp in top(c.logprobs[0], 3)}
    assert got == pytest.approx({t: lp.logprob for t, lp in top(direct, 3)}, abs=1e-4)
    assert len(ext.prompt_logprobs) == len(prompt) + 1


def test_one_bad_prompt_fails_the_batch_before_any_request_starts(
    tiny_llm: LLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    added: list[str] = []
    real_add = tiny_llm.engine.add
    monkeypatch.setattr(
        tiny_llm.engine,
        "add",
        lambda req, prompt=None: (added.append(req.request_id), real_add(req, prompt)),
    )
    bad_prompts: list[Any] = [
        {"prompt_token_ids": [1.5, 2.0]},
        {"prompt_token_ids": "abc"},
        {"prompt_token_ids": [10**9]},
    ]
    for bad in bad_prompts:
        with pytest.raises(InvalidRequestError, match=r"prompt_token_ids|vocabulary"):
            tiny_llm.generate([{"prompt_token_ids": [5, 6]}, bad], greedy(2))
    assert added == []
    assert not tiny_llm.engine.has_unfinished()


def test_text_prompt_dicts_and_multimodal_data(tiny_llm: LLM) -> None:
    a = tiny_llm.generate({"prompt": "Hello"}, greedy(4))[0]
    b = tiny_llm.generate("Hello", greedy(4))[0]
    assert a.prompt == "Hello"
    assert a.outputs[0].token_ids == b.outputs[0].token_ids
    with pytest.raises(ValueError, match="multi_modal_data"):
        tiny_llm.generate({"prompt": "Hello", "multi_modal_data": {"image": "x"}}, greedy(4))


def test_truncate_prompt_tokens_keeps_the_last_ones(tiny_llm: LLM) -> None:
    ids = [5, 6, 7, 8, 9, 10]
    out = tiny_llm.generate({"prompt_token_ids": ids}, greedy(2, truncate_prompt_tokens=3))[0]
    assert out.prompt_token_ids == [8, 9, 10]
    whole = tiny_llm.generate({"prompt_token_ids": ids[-3:]}, greedy(2))[0]
    assert out.outputs[0].token_ids == whole.outputs[0].token_ids


def test_seed_minus_one_is_random(tiny_llm: LLM) -> None:
    params = SamplingParams(temperature=1.0, seed=-1, max_tokens=10, ignore_eos=True)
    runs = {tuple(tiny_llm.generate("Hi", params)[0].outputs[0].token_ids) for _ in range(3)}
    assert len(runs) > 1


def test_generation_config_gives_the_defaults(tiny_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_dir, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "generation_config.json").read_text())
    config |= {"temperature": 0.0, "top_k": 1, "max_new_tokens": 5, "do_sample": False}
    (tmp_path / "generation_config.json").write_text(json.dumps(config))
    llm = cpu_llm(tmp_path)
    defaults = llm.get_default_sampling_params()
    assert (defaults.temperature, defaults.top_k, defaults.max_tokens) == (0.0, 1, 5)
    a, b = (llm.generate("Hello")[0].outputs[0] for _ in range(2))
    assert a.token_ids == b.token_ids
    assert len(a.token_ids) <= 5
    neutral = cpu_llm(tmp_path, generation_config="vllm").get_default_sampling_params()
    assert (neutral.temperature, neutral.max_tokens) == (1.0, 16)


# --- chat ------------------------------------------------------------------------------------


def test_chat_takes_a_list_of_conversations(tiny_llm: LLM) -> None:
    one = tiny_llm.chat(HI, greedy(3))
    both = tiny_llm.chat([HI, [{"role": "user", "content": "bye"}]], greedy(3))
    assert len(one) == 1 and len(both) == 2
    assert both[0].outputs[0].token_ids == one[0].outputs[0].token_ids


def test_chat_options_as_vllm(tiny_llm: LLM) -> None:
    tok = tiny_llm.get_tokenizer()
    convo = [*HI, {"role": "assistant", "content": "Hello the"}]
    out = tiny_llm.chat(convo, greedy(2), add_generation_prompt=False, continue_final_message=True)[
        0
    ]
    assert tok.decode(out.prompt_token_ids).endswith("Hello the")
    template = "{% for m in messages %}[{{ m.content }}|{{ mood }}]{% endfor %}"
    out = tiny_llm.chat(
        HI, greedy(2), chat_template=template, chat_template_kwargs={"mood": "calm"}
    )[0]
    assert tok.decode(out.prompt_token_ids) == "[hi|calm]"
    ids = tok.apply_chat_template(HI, add_generation_prompt=True)
    direct = tiny_llm.generate({"prompt_token_ids": ids}, greedy(3))[0]
    assert direct.outputs[0].token_ids == tiny_llm.chat(HI, greedy(3))[0].outputs[0].token_ids


def test_invalid_request_errors_are_value_errors() -> None:
    assert issubclass(InvalidRequestError, ValueError)
    assert InvalidRequestError.status_code == 400  # the servers' mapping is unchanged
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
