"""The OpenAI API beyond one plain choice: batched prompts, echo, n, structured outputs, tools,
/v1/models/{id}, /tokenize and /detokenize, via the `openai` client."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jsonschema
import openai
import pytest

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "size": {"enum": ["S", "M", "L"]}},
    "required": ["ok", "size"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "w",
            "parameters": {
                "type": "object",
                "properties": {"c": {"enum": ["P", "O"]}},
                "required": ["c"],
                "additionalProperties": False,
            },
        },
    }
]
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="none", timeout=60)


def test_completion_batches_and_n(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model="tiny", prompt=["a b", "c d"], n=2, max_tokens=3, temperature=1.0, seed=11
    )
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage is not None and 4 <= r.usage.completion_tokens <= 12
    again = client.completions.create(
        model="tiny", prompt=["a b", "c d"], n=2, max_tokens=3, temperature=1.0, seed=11
    )
    assert [c.text for c in again.choices] == [c.text for c in r.choices]  # seeds: seed + j
    r2 = client.completions.create(
        model="tiny", prompt=[[5, 6], [7, 8]], max_tokens=2, temperature=0
    )
    assert len(r2.choices) == 2


def test_completion_echo_and_stream_n(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model="tiny", prompt="Echo me", echo=True, max_tokens=3, temperature=0
    )
    assert r.choices[0].text.startswith("Echo me")
    stream = client.completions.create(
        model="tiny", prompt="x", n=3, max_tokens=3, temperature=0, stream=True
    )
    texts = ["", "", ""]
    finished = set()
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.text
            if c.finish_reason:
                finished.add(c.index)
    assert finished == {0, 1, 2} and texts[0] == texts[1] == texts[2]  # greedy


def test_best_of_and_suffix_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="best_of"):
        client.completions.create(model="tiny", prompt="x", best_of=3, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="insert"):
        client.completions.create(model="tiny", prompt="x", suffix="y", max_tokens=2)


@pytest.mark.parametrize("stream", [False, True])
def test_chat_json_schema_response_format(client: openai.OpenAI, stream: bool) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA}}
    kw: dict[str, Any] = {
        "model": "tiny",
        "messages": MESSAGES,
        "response_format": fmt,
        "max_tokens": 64,
        "seed": 5,
        "temperature": 1.0,
    }
    if stream:
        text = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(stream=True, **kw)
            if c.choices
        )
    else:
        text = client.chat.completions.create(**kw).choices[0].message.content or ""
    jsonschema.validate(json.loads(text), SCHEMA)


def test_guided_regex_and_n_choices(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        n=2,
        max_tokens=20,
        temperature=1.0,
        extra_body={"guided_regex": "[ab]{4}"},
    )
    assert len(r.choices) == 2
    for c in r.choices:
        assert re.fullmatch("[ab]{4}", c.message.content or "")


def test_bad_response_format_is_400(client: openai.OpenAI) -> None:
    bad: Any = {"type": "xml"}
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=MESSAGES, response_format=bad)


def test_tool_choice_named_and_required(client: openai.OpenAI) -> None:
    named = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "w"}},
        seed=1,
    )
    call: Any = (named.choices[0].message.tool_calls or [])[0]
    assert call.function.name == "w" and json.loads(call.function.arguments)["c"] in ("P", "O")
    required = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        seed=2,
    )
    choice = required.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [only] = choice.message.tool_calls or []
    call = only
    assert call.function.name == "w" and json.loads(call.function.arguments)["c"] in ("P", "O")
    with pytest.raises(openai.BadRequestError, match="not in tools"):
        client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "zz"}},
        )
    with pytest.raises(openai.BadRequestError, match="tool_choice must name a function"):
        client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            tools=TOOLS,
            tool_choice={"type": "function"},  # type: ignore[typeddict-item]
        )


def test_tool_call_stream_and_tool_round_trip(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "w"}},
            seed=1,
            stream=True,
        )
    )
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function and calls[0].function.name == "w"
    history: list[Any] = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "w", "arguments": '{"c": "P"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    r = client.chat.completions.create(model="tiny", messages=history, max_tokens=4, temperature=0)  # type: ignore[arg-type]
    assert r.choices[0].message.role == "assistant"


def test_model_by_id_tokenize_detokenize(client: openai.OpenAI, base_url: str) -> None:
    assert client.models.retrieve("tiny").id.startswith("tiny")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    tok = httpx.post(base_url + "/tokenize", json={"model": "tiny", "prompt": "hello there"}).json()
    assert tok["count"] == len(tok["tokens"]) > 0 and tok["max_model_len"] > 0
    text = httpx.post(
        base_url + "/detokenize", json={"model": "tiny", "tokens": tok["tokens"]}
    ).json()["prompt"]
    assert "hello there" in text
    chat = httpx.post(base_url + "/tokenize", json={"messages": MESSAGES}).json()
    assert chat["count"] > tok["count"]


def test_auto_tools_stream_text_like_without_tools(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = {"model": "tiny", "messages": MESSAGES, "max_tokens": 6, "temperature": 0}
    whole = client.chat.completions.create(tools=TOOLS, **kw).choices[0]
    chunks = list(client.chat.completions.create(tools=TOOLS, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    if whole.message.tool_calls:
        assert len(calls) == len(whole.message.tool_calls)
    else:
        assert text == whole.message.content and not calls
