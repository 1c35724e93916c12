"""Ollama's /api/generate and /api/chat beyond plain text: format (constrained decoding),
template, suffix, images, options, logprobs, tools and think, via the `ollama` client."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import ollama
import pytest

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "size": {"enum": ["S", "M", "L"]}},
    "required": ["ok", "size"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "w",
        "parameters": {"type": "object", "properties": {"c": {"enum": ["P", "O"]}}},
    },
}


@pytest.fixture(scope="module")
def client(base_url: str) -> ollama.Client:
    return ollama.Client(host=base_url, timeout=60)


@pytest.mark.parametrize("stream", [False, True])
def test_generate_format_schema_validates(client: ollama.Client, stream: bool) -> None:
    opts = {"seed": 3, "num_predict": 64}
    if stream:
        text = "".join(
            c.response or ""
            for c in client.generate("tiny", "hi", format=SCHEMA, options=opts, stream=True)
        )
    else:
        text = client.generate("tiny", "hi", format=SCHEMA, options=opts).response or ""
    jsonschema.validate(json.loads(text), SCHEMA)


def test_chat_format_json(client: ollama.Client) -> None:
    r = client.chat(
        "tiny",
        [{"role": "user", "content": "hi"}],
        format="json",
        options={"seed": 1, "num_predict": 200},
    )
    text = r.message.content or ""
    if r.done_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # a random model may write a long object; what exists is still a JSON prefix
        assert text.startswith("{")


def test_bad_format_and_images_are_400(base_url: str) -> None:
    r = httpx.post(
        base_url + "/api/generate", json={"model": "tiny", "prompt": "x", "format": "yaml"}
    )
    assert r.status_code == 400 and "format" in r.json()["error"]
    r = httpx.post(
        base_url + "/api/generate",
        json={"model": "tiny", "prompt": "x", "format": {"type": "bogus"}},
    )
    assert r.status_code == 400
    r = httpx.post(
        base_url + "/api/generate", json={"model": "tiny", "prompt": "x", "images": ["aGk="]}
    )
    assert r.status_code == 400 and "does not support images" in r.json()["error"]


def test_suffix_without_fim_tokens_is_400(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        client.generate("tiny", "def f(", suffix="return x")
    assert e.value.status_code == 400 and "does not support insert" in e.value.error


def test_template_is_rendered(client: ollama.Client) -> None:
    greedy = {"temperature": 0, "num_predict": 4}
    via_template = client.generate(
        "tiny",
        "hello",
        system="S",
        template="{{ if .System }}[{{ .System }}] {{ end }}{{ .Prompt }}",
        options=greedy,
    )
    raw = client.generate("tiny", "[S] hello", raw=True, options=greedy)
    assert via_template.response == raw.response
    with pytest.raises(ollama.ResponseError) as e:
        client.generate("tiny", "x", template="{{ range .Messages }}{{ end }}")
    assert e.value.status_code == 400


def test_options_are_mapped(client: ollama.Client) -> None:
    opts = {
        "temperature": 0,
        "num_predict": 6,
        "repeat_penalty": 1.3,
        "repeat_last_n": 8,
        "typical_p": 0.5,
        "num_thread": 2,
    }
    r = client.generate("tiny", "a b c", options=opts)
    assert r.eval_count == 6 or r.done_reason == "stop"


def test_generate_logprobs(client: ollama.Client) -> None:
    r = client.generate(
        "tiny", "hi", logprobs=True, top_logprobs=2, options={"temperature": 0, "num_predict": 4}
    )
    assert r.logprobs is not None and len(r.logprobs) == r.eval_count
    first = r.logprobs[0]
    assert first.logprob <= 0 and len(first.top_logprobs or []) == 2
    chunks = list(
        client.generate(
            "tiny", "hi", logprobs=True, stream=True, options={"temperature": 0, "num_predict": 4}
        )
    )
    assert sum(len(c.logprobs or []) for c in chunks) == 4


def test_chat_with_tool_messages_and_tools(client: ollama.Client) -> None:
    messages: list[Any] = [
        {"role": "user", "content": "P?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "w", "arguments": {"c": "P"}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "w"},
    ]
    r = client.chat(
        "tiny", messages, tools=[WEATHER_TOOL], options={"temperature": 0, "num_predict": 8}
    )
    assert r.done and r.message.role == "assistant"
    chunks = list(
        client.chat(
            "tiny",
            messages,
            tools=[WEATHER_TOOL],
            stream=True,
            options={"temperature": 0, "num_predict": 8},
        )
    )
    assert chunks[-1].done and "".join(c.message.content or "" for c in chunks) == r.message.content


def test_think_on_a_model_without_thinking_is_400(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        client.chat("tiny", [{"role": "user", "content": "hi"}], think=True)
    assert e.value.status_code == 400 and "thinking" in e.value.error
    r = client.chat(
        "tiny", [{"role": "user", "content": "hi"}], think=False, options={"num_predict": 2}
    )
    assert r.done


def test_show_fields_and_name_alias(base_url: str) -> None:
    r = httpx.post(base_url + "/api/show", json={"name": "tiny"})
    assert r.status_code == 200
    body = r.json()
    assert {"template", "parameters", "details", "model_info", "capabilities"} <= set(body)
    info = body["model_info"]
    arch = info["general.architecture"]
    assert info[f"{arch}.context_length"] == 4096 and info[f"{arch}.block_count"] == 2
    assert "completion" in body["capabilities"]
