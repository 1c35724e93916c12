"""The OpenAI API as vLLM serves it, driven by the official `openai` client and by raw HTTP."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="x", timeout=60, max_retries=0)


def sse_events(base_url: str, path: str, body: dict[str, object]) -> list[str]:
    with httpx.stream("POST", base_url + path, json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    assert text.endswith("data: [DONE]\n\n")
    return [e.removeprefix("data: ") for e in text.split("\n\n") if e]


def test_models(client: openai.OpenAI, base_url: str) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny:latest"]
    card = httpx.get(base_url + "/v1/models").json()["data"][0]
    assert card["object"] == "model" and card["owned_by"] == "ember"
    assert card["max_model_len"] == 512 and isinstance(card["created"], int)


def test_completion(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model="tiny",
        prompt="The capital of France is",
        extra_body={"ignore_eos": True},
        temperature=0.0,
        max_tokens=8,
    )
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.model == "tiny"  # the name the request used, as vLLM answers
    choice = r.choices[0]
    assert isinstance(choice.text, str) and choice.finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8


def test_completion_stream_matches_and_reports_usage(client: openai.OpenAI) -> None:
    def create(stream: bool) -> Any:
        return client.completions.create(
            model="tiny:latest",
            prompt="One two three",
            temperature=0.0,
            max_tokens=8,
            extra_body={"ignore_eos": True},
            stream=stream,
            stream_options={"include_usage": True} if stream else None,
        )

    whole = create(False)
    chunks = list(create(True))
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
    )
    text_chunks = chunks[:-1]
    assert "".join(c.choices[0].text for c in text_chunks) == whole.choices[0].text
    assert text_chunks[-1].choices[0].finish_reason == "length"


def test_completion_from_token_ids(client: openai.OpenAI) -> None:
    r = client.completions.create(model="tiny", prompt=[1, 2, 3, 4], temperature=0.0, max_tokens=8)
    assert r.usage is not None and r.usage.prompt_tokens == 4


def test_chat_completion(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="tiny", messages=MESSAGES, temperature=0.0, max_tokens=8
    )
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    msg = r.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and 1 <= r.usage.completion_tokens <= 8


def test_chat_stream(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model="tiny", messages=MESSAGES, temperature=0.0, max_tokens=8
    )
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=MESSAGES, stream=True, temperature=0.0, max_tokens=8
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content


def test_chat_stream_raw_sse_with_usage(base_url: str) -> None:
    body = {
        "model": "tiny",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 4,
        "ignore_eos": True,
        "temperature": 0,
    }
    events = sse_events(base_url, "/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    data = [json.loads(e) for e in events[:-1]]
    assert data[-1]["choices"] == [] and data[-1]["usage"]["completion_tokens"] == 4
    assert data[-2]["choices"][0]["finish_reason"] == "length"


def test_vllm_sampling_extras_and_seed(client: openai.OpenAI) -> None:
    extra = {
        "top_k": 5,
        "min_p": 0.05,
        "repetition_penalty": 1.2,
        "min_tokens": 2,
        "unknown_field": 1,
    }
    a, b = (
        client.completions.create(
            model="tiny", prompt="seeded", max_tokens=6, temperature=1.0, seed=7, extra_body=extra
        )
        for _ in range(2)
    )
    assert a.choices[0].text == b.choices[0].text
    assert a.usage is not None and a.usage.completion_tokens >= 2


def test_chat_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        logprobs=True,
        top_logprobs=2,
        temperature=0.0,
        max_tokens=8,
    )
    assert r.choices[0].logprobs is not None and r.usage is not None
    content = r.choices[0].logprobs.content
    assert content is not None and len(content) == r.usage.completion_tokens
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)
    for t in content:  # greedy: the token is the likeliest, and the top ones come sorted
        assert (t.token, t.logprob) == (t.top_logprobs[0].token, t.top_logprobs[0].logprob)
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
    hot = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        logprobs=True,
        top_logprobs=1,
        temperature=2.0,
        seed=1,
        max_tokens=16,
    )
    assert hot.choices[0].logprobs is not None and hot.choices[0].logprobs.content
    # A sampled token outside the top 1 does not make the list longer.
    for t in hot.choices[0].logprobs.content:
        assert len(t.top_logprobs) == 1 and t.top_logprobs[0].logprob >= t.logprob


def test_too_long_is_400_with_vllm_message(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="hello", max_tokens=100_000)
    assert "maximum context length is 512 tokens" in e.value.message
    body = e.value.body
    assert isinstance(body, dict) and body["type"] == "BadRequestError" and body["code"] == 400


def test_n_above_the_limit_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=MESSAGES, n=1000, max_tokens=2)


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=MESSAGES)
    body = e.value.body
    assert isinstance(body, dict) and body["type"] == "NotFoundError" and body["code"] == 404
    assert "nope" in body["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{oops", None),
        (
            json.dumps({"model": "tiny", "prompt": "x", "temperature": "hot"}).encode(),
            "temperature",
        ),
        (json.dumps({"model": "tiny"}).encode(), "prompt"),
        (json.dumps({"model": "tiny", "prompt": "x", "top_p": 5}).encode(), "top_p"),
    ],
)
def test_bad_requests_are_400_in_openai_format(
    base_url: str, body: bytes, param: str | None
) -> None:
    r = httpx.post(
        base_url + "/v1/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "BadRequestError" and err["code"] == 400
    assert err["param"] == param
    if param:
        assert param in err["message"]


def test_unknown_route_is_404_in_family_format(base_url: str) -> None:
    assert httpx.get(base_url + "/v1/nothing").json()["error"]["code"] == 404
    assert isinstance(httpx.get(base_url + "/api/nothing").json()["error"], str)
