"""Where vLLM's OpenAI server and ember must agree in the details: every token's logprob reaches
a stream, text offsets, top_logprobs holding the sampled token, stream_options, template
arguments, continue_final_message, forced tool calls cut short, request checks, /tokenize's
error format, /detokenize's special tokens and /ping."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "w",
        "parameters": {"type": "object", "properties": {"c": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="x", timeout=60, max_retries=0)


def sse(base_url: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", base_url + path, json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        text = r.read().decode()
    events = [e.removeprefix("data: ") for e in text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def post(base_url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(base_url + path, json=body, timeout=60)


@pytest.mark.parametrize("seed", [3, 7])
def test_a_stream_carries_every_tokens_logprob(base_url: str, seed: int) -> None:
    """Tokens that add no text yet (a partial character, text held back for a stop string)
    still send their logprobs, in the order the whole response gives them."""
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 16, "seed": seed, "logprobs": 1}
    body |= {"stop": ["zzzz"], "ignore_eos": True}
    whole = post(base_url, "/v1/completions", body).json()["choices"][0]["logprobs"]
    events = sse(base_url, "/v1/completions", body)
    streamed: dict[str, list[Any]] = {"tokens": [], "text_offset": [], "token_logprobs": []}
    for e in events:
        lps = e["choices"][0]["logprobs"]
        for key, values in streamed.items():
            values += lps[key] if lps else []
    assert len(streamed["tokens"]) == 16
    for key, values in streamed.items():
        assert values == whole[key], key
    chat = {"model": "tiny", "messages": MESSAGES, "max_tokens": 16, "seed": seed}
    chat |= {"logprobs": True, "top_logprobs": 1, "ignore_eos": True}
    entries = [
        lp["token"]
        for e in sse(base_url, "/v1/chat/completions", chat)
        if e["choices"] and e["choices"][0]["logprobs"]
        for lp in e["choices"][0]["logprobs"]["content"]
    ]
    whole_chat = post(base_url, "/v1/chat/completions", chat).json()["choices"][0]
    assert entries == [lp["token"] for lp in whole_chat["logprobs"]["content"]]
    assert len(entries) == 16


def test_completion_top_logprobs_hold_the_sampled_token(base_url: str) -> None:
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 4, "seed": 5, "logprobs": 2}
    lps = post(base_url, "/v1/completions", body).json()["choices"][0]["logprobs"]
    for token, lp, top in zip(
        lps["tokens"], lps["token_logprobs"], lps["top_logprobs"], strict=True
    ):
        assert top[token] == lp and 2 <= len(top) <= 3
    zero = post(base_url, "/v1/completions", {**body, "logprobs": 0}).json()
    lps = zero["choices"][0]["logprobs"]
    assert lps["top_logprobs"] == [
        {t: lp} for t, lp in zip(lps["tokens"], lps["token_logprobs"], strict=True)
    ]


def test_stream_options_usage_as_vllm(base_url: str) -> None:
    body: dict[str, Any] = {"model": "tiny", "messages": MESSAGES, "max_tokens": 3}
    body |= {"ignore_eos": True, "stream_options": {}}
    events = sse(base_url, "/v1/chat/completions", body)
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 3
    assert all("usage" not in e for e in events[:-1])
    body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    events = sse(base_url, "/v1/chat/completions", body)
    counts = [e["usage"]["completion_tokens"] for e in events]
    assert counts == sorted(counts) and counts[-1] == 3
    assert all(e["usage"]["prompt_tokens"] == events[0]["usage"]["prompt_tokens"] for e in events)
    r = post(base_url, "/v1/chat/completions", {**body, "stream": False})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"


def rendered(base_url: str, body: dict[str, Any]) -> str:
    r = post(base_url, "/tokenize", {"model": "tiny", **body})
    assert r.status_code == 200, r.text
    return str(post(base_url, "/detokenize", {"tokens": r.json()["tokens"]}).json()["prompt"])


def test_chat_template_kwargs_override_the_requests_arguments(base_url: str) -> None:
    plain = rendered(base_url, {"messages": MESSAGES, "add_generation_prompt": False})
    over = rendered(
        base_url, {"messages": MESSAGES, "chat_template_kwargs": {"add_generation_prompt": False}}
    )
    assert over == plain and "<|begin_of_text|>" in plain
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2}
    r = post(base_url, "/v1/chat/completions", body | {"chat_template_kwargs": {"messages": []}})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    kw = {"chat_template_kwargs": {"add_generation_prompt": False}}
    assert post(base_url, "/v1/chat/completions", body | kw).status_code == 200


def test_continue_final_message_leaves_it_open(base_url: str, client: openai.OpenAI) -> None:
    prefill = [*MESSAGES, {"role": "assistant", "content": "Sure, the answer is"}]
    body = {"messages": prefill, "add_generation_prompt": False, "continue_final_message": True}
    assert rendered(base_url, body).endswith("Sure, the answer is")
    closed = rendered(base_url, {**body, "continue_final_message": False})
    assert closed.endswith("<|eot_id|>")
    r = client.chat.completions.create(
        model="tiny",
        messages=prefill,
        max_tokens=2,
        extra_body={"add_generation_prompt": False, "continue_final_message": True},
    )
    assert r.usage is not None
    prompt = post(base_url, "/tokenize", {"model": "tiny", **body}).json()["count"]
    assert r.usage.prompt_tokens == prompt
    with pytest.raises(openai.BadRequestError, match="add_generation_prompt"):
        client.chat.completions.create(
            model="tiny",
            messages=prefill,
            max_tokens=2,
            extra_body={"continue_final_message": True},
        )


def test_a_named_tool_call_cut_short_is_still_a_tool_call(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        tools=[TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "w"}},
        max_tokens=3,
        seed=1,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "length" and choice.message.content == ""
    [call] = choice.message.tool_calls or []
    assert call.function.name == "w" and call.function.arguments.startswith("{")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools"),
        ({"top_k": -5}, "top_k"),
    ],
)
def test_requests_vllm_refuses_are_400(base_url: str, extra: dict[str, Any], param: str) -> None:
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2, **extra}
    r = post(base_url, "/v1/chat/completions", body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_tokenize_routes_answer_as_openai(base_url: str) -> None:
    r = post(base_url, "/tokenize", {"model": "nope", "prompt": "hi"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFoundError"
    r = post(base_url, "/detokenize", {"model": "tiny", "tokens": [10**9]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"
    ids = post(base_url, "/tokenize", {"messages": MESSAGES}).json()["tokens"]
    text = post(base_url, "/detokenize", {"tokens": ids}).json()["prompt"]
    assert text.startswith("<|begin_of_text|>") and "<|eot_id|>" in text
    for method in ("GET", "POST"):
        assert httpx.request(method, base_url + "/ping").status_code == 200


def completion(base_url: str, **body: Any) -> httpx.Response:
    return post(base_url, "/v1/completions", {"model": "tiny", "prompt": "hello", **body})


def test_token_filters_and_prompt_options_take_effect(base_url: str) -> None:
    greedy = {"max_tokens": 4, "temperature": 0, "ignore_eos": True, "logprobs": 0}
    plain = completion(base_url, **greedy).json()["choices"][0]["logprobs"]["tokens"]
    ids = post(base_url, "/tokenize", {"prompt": "x y", "add_special_tokens": False}).json()
    x = ids["tokens"][0]
    forced = completion(base_url, **greedy, logit_bias={str(x): 100}).json()
    assert forced["choices"][0]["text"] == "x" * 4
    allowed = completion(base_url, **greedy, allowed_token_ids=ids["tokens"]).json()
    assert set(allowed["choices"][0]["logprobs"]["tokens"]) <= {"x", " y"}
    assert allowed["choices"][0]["logprobs"]["tokens"] != plain
    pick = completion(base_url, max_tokens=8, guided_choice=["yes", "no way"]).json()
    assert pick["choices"][0]["text"] in ("yes", "no way")
    fmt = completion(base_url, max_tokens=24, seed=2, response_format={"type": "json_object"})
    assert fmt.json()["choices"][0]["text"].lstrip().startswith("{")
    full = completion(base_url, max_tokens=1).json()["usage"]["prompt_tokens"]
    bare = completion(base_url, max_tokens=1, add_special_tokens=False).json()
    assert bare["usage"]["prompt_tokens"] == full - 1  # no BOS
    cut = completion(base_url, max_tokens=1, truncate_prompt_tokens=1).json()
    assert cut["usage"]["prompt_tokens"] == 1


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logit_bias": {"999999": 5}}, "logit_bias"),
        ({"logit_bias": {"a": 5}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"allowed_token_ids": []}, "allowed_token_ids"),
        ({"bad_words": ["x"]}, "bad_words"),
        ({"prompt_logprobs": 21}, "prompt_logprobs"),
        ({"prompt_logprobs": 1, "stream": True}, "prompt_logprobs"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
        ({"guided_choice": []}, "guided_choice"),
    ],
)
def test_unusable_token_options_are_400(base_url: str, extra: dict[str, Any], param: str) -> None:
    r = completion(base_url, **{"max_tokens": 2, **extra})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_more_choices_than_the_server_admits_is_a_400(base_url: str) -> None:
    """n times the prompts above --num-parallel + --max-queue (18 here) could never run: a 400
    that says so, not a 503 that a client would retry for ever."""
    r = completion(base_url, prompt=["a", "b"], n=10, max_tokens=1)
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    assert "--num-parallel" in r.json()["error"]["message"]
    assert completion(base_url, prompt=["a", "b"], n=9, max_tokens=1).status_code == 200


def test_echo_with_logprobs_scores_the_prompt(base_url: str) -> None:
    """What lm-evaluation-harness sends to score a text: echo, logprobs and max_tokens 0. The
    prompt's tokens come back with their logprobs (none for the first), nothing is generated,
    and the scores are those of vLLM's prompt_logprobs for the same prompt."""
    ids = post(base_url, "/tokenize", {"prompt": "The sky is blue"}).json()["tokens"]
    r = completion(base_url, prompt=ids, echo=True, logprobs=2, max_tokens=0).json()
    choice = r["choices"][0]
    lps = choice["logprobs"]
    assert r["usage"]["completion_tokens"] == 0 and choice["finish_reason"] == "length"
    assert len(lps["tokens"]) == len(ids) and lps["token_logprobs"][0] is None
    assert lps["top_logprobs"][0] is None and lps["text_offset"][0] == 0
    assert all(isinstance(x, float) and x <= 0 for x in lps["token_logprobs"][1:])
    for token, lp, top in zip(
        lps["tokens"][1:], lps["token_logprobs"][1:], lps["top_logprobs"][1:], strict=True
    ):
        assert top[token] == lp and 2 <= len(top) <= 3
    assert choice["text"] == "The sky is blue"  # the prompt's text, special tokens skipped
    vllm = completion(base_url, prompt=ids, prompt_logprobs=0, max_tokens=1).json()
    entries = vllm["choices"][0]["prompt_logprobs"]
    assert entries[0] is None and len(entries) == len(ids)
    for token_id, entry, lp in zip(ids[1:], entries[1:], lps["token_logprobs"][1:], strict=True):
        assert entry[str(token_id)]["logprob"] == pytest.approx(lp)
        assert entry[str(token_id)]["rank"] >= 1
    both = completion(
        base_url, prompt="The sky", echo=True, logprobs=0, max_tokens=3, ignore_eos=True
    )
    lps = both.json()["choices"][0]["logprobs"]
    assert (
        len(lps["tokens"])
        == len(post(base_url, "/tokenize", {"prompt": "The sky"}).json()["tokens"]) + 3
    )
    assert lps["text_offset"] == sorted(lps["text_offset"])


def test_chat_prompt_logprobs(base_url: str) -> None:
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 1, "prompt_logprobs": 1}
    r = post(base_url, "/v1/chat/completions", body).json()
    count = post(base_url, "/tokenize", {"messages": MESSAGES}).json()["count"]
    assert len(r["prompt_logprobs"]) == count == r["usage"]["prompt_tokens"]
    assert r["prompt_logprobs"][0] is None and all(
        1 <= len(e) <= 2 for e in r["prompt_logprobs"][1:]
    )


def test_seed_minus_one_is_random_for_every_choice() -> None:
    from ember.server.protocol_openai import _choice_seed

    assert [_choice_seed(-1, i) for i in range(3)] == [-1, -1, -1]
    assert [_choice_seed(7, i) for i in range(3)] == [7, 8, 9]
    assert _choice_seed(2**64 - 1, 1) == 0


def test_a_nan_in_the_body_is_named_once(base_url: str) -> None:
    r = httpx.post(
        base_url + "/v1/completions",
        content=b'{"model": "tiny", "prompt": "x", "temperature": NaN}',
    )
    message = r.json()["error"]["message"]
    assert r.status_code == 400 and message.count("invalid JSON body") == 1, message


def test_a_streamed_echo_of_the_prompt_alone_counts_no_completion_tokens(base_url: str) -> None:
    body = {"model": "tiny", "prompt": "The sky", "echo": True, "max_tokens": 0}
    body["stream_options"] = {"include_usage": True}
    events = sse(base_url, "/v1/completions", body)
    assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == "The sky"
    assert events[-1]["usage"]["completion_tokens"] == 0
