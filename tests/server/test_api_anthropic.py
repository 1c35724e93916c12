"""POST /v1/messages and /v1/messages/count_tokens, driven by the official `anthropic` client:
every reply and stream event must parse as the client's own types. The tiny model (the shared
server) shows usage, stop reasons, streaming, errors and aborts; scripted models (scripted.py)
behind a server with an API key show tool use round trips, thinking blocks and stop sequences
with known text."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter
from scripted import (
    MISTRAL_CALL,
    QWEN_CALL,
    QWEN_OFF,
    QWEN_OPEN,
    serve_scripted,
    write_mistral,
    write_qwen,
)
from serverproc import Server, aborted, idle, wait_for

EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
HI: list[Any] = [{"role": "user", "content": "Say hello"}]
KEY = "sk-ember-test"
WEATHER: list[Any] = [
    {
        "name": "get_weather",
        "description": "Current weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]
MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")


def strict(message: Message) -> Message:
    """The message validated against the client's types, not just constructed from them."""
    return Message.model_validate(message.model_dump(mode="json"))


def blocks(message: Message) -> list[dict[str, Any]]:
    """The content blocks as JSON (a streamed message's are the client's Parsed* kinds)."""
    return [b.model_dump(mode="json", exclude={"parsed_output"}) for b in message.content]


@pytest.fixture(scope="module")
def client(base_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base_url, api_key="unused", timeout=60, max_retries=0)


def tokenize(base_url: str, messages: list[Any]) -> int:
    body = {"model": "tiny", "messages": messages}
    return int(httpx.post(base_url + "/tokenize", json=body, timeout=30).json()["count"])


def test_create_with_usage_and_the_model_as_sent(
    client: anthropic.Anthropic, base_url: str
) -> None:
    m = strict(client.messages.create(model="tiny", max_tokens=6, messages=HI))
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant"
    assert m.model == "tiny" and m.stop_reason in ("end_turn", "max_tokens")
    assert all(b.type == "text" for b in m.content)
    assert 1 <= m.usage.output_tokens <= 6 and m.usage.cache_creation_input_tokens == 0
    cached = m.usage.cache_read_input_tokens or 0
    assert m.usage.input_tokens + cached == tokenize(base_url, HI)
    count = client.messages.count_tokens(model="tiny", messages=HI)
    assert count.input_tokens == tokenize(base_url, HI)


def test_max_tokens_and_system_as_a_string_or_blocks(
    client: anthropic.Anthropic, base_url: str
) -> None:
    blocks: list[Any] = [
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Be kind."},
    ]
    for system, text in (("Be brief.", "Be brief."), (blocks, "Be brief.\nBe kind.")):
        m = strict(
            client.messages.create(
                model="tiny",
                max_tokens=3,
                system=system,
                messages=HI,
                extra_body={"temperature": 1.0, "top_k": 1},  # this client version has no fields
            )
        )
        assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 3
        chat = [{"role": "system", "content": text}, *HI]
        total = m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0)
        assert total == tokenize(base_url, chat)
        counted = client.messages.count_tokens(model="tiny", system=system, messages=HI)
        assert counted.input_tokens == total


def test_stream_matches_the_whole_message(client: anthropic.Anthropic) -> None:
    kw: dict[str, Any] = {
        "model": "tiny",
        "max_tokens": 8,
        "messages": HI,
        "extra_body": {"temperature": 0, "ignore_eos": True},
    }
    whole = strict(client.messages.create(**kw))
    with client.messages.stream(**kw) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "".join(b.text for b in whole.content if b.type == "text")
    assert blocks(final) == blocks(whole) and final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens == 8
    assert whole.stop_reason == "max_tokens"
    raw = [e.type for e in client.messages.create(stream=True, **kw)]
    assert raw[0] == "message_start" and raw[-2:] == ["message_delta", "message_stop"]


def error_of(exc: anthropic.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict) and body["type"] == "error"
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"messages": [{"role": "system", "content": "x"}]}, "role"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {"type": "base64", "media_type": "image/png", "data": ""},
                            }
                        ],
                    }
                ]
            },
            "text-only",
        ),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "web_search"),
        ({"tools": WEATHER, "tool_choice": {"type": "required"}}, "tool_choice"),
        ({"tools": WEATHER, "tool_choice": {"type": "tool", "name": "nope"}}, "nope"),
    ],
)
def test_what_ember_cannot_take_is_an_invalid_request_error(
    base_url: str, body: dict[str, Any], words: str
) -> None:
    payload = {"model": "tiny", "max_tokens": 4, "messages": HI, **body}
    payload = {k: v for k, v in payload.items() if v is not None}
    r = httpx.post(base_url + "/v1/messages", json=payload, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert words in err["error"]["message"], err


def test_client_errors_are_typed(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(
            model="tiny", max_tokens=4, messages=[{"role": "user", "content": [{"type": "x"}]}]
        )
    assert error_of(bad.value)["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="nope", max_tokens=4, messages=HI)
    assert error_of(missing.value)["type"] == "not_found_error"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="nope", messages=HI)
    with pytest.raises(anthropic.BadRequestError) as path:  # store names only
        client.messages.create(model="/etc/models/x", max_tokens=4, messages=HI)
    assert "store" in error_of(path.value)["message"]


def test_stream_disconnect_frees_the_engine(server: Server) -> None:
    assert wait_for(lambda: idle(server))
    before = aborted(server)
    body = {"model": "tiny", "max_tokens": 480, "messages": HI, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server.url + "/v1/messages", json=body, timeout=60) as r:
        seen, busy = 0, 0.0
        for line in r.iter_lines():
            seen += '"text_delta"' in line
            if seen == 2:  # still reading: leaving the loop closes the connection
                busy = server.metrics()["vllm:num_requests_running"]
                break
    assert busy == 1
    assert wait_for(lambda: idle(server) and aborted(server) == before + 1), server.metrics()


# Scripted models behind a server with an API key ---------------------------------------------


def _models(models: Path) -> None:
    write_mistral(
        models / "mistral-call" / "latest",
        {
            "[INST]x[/INST]": ["Let me check.", "[TOOL_CALLS]", MISTRAL_CALL],
            "[/TOOL_RESULTS]": ["It is sunny in Paris."],
        },
    )
    write_qwen(
        models / "qwen-think" / "latest",
        {
            QWEN_OPEN: ["<think>", "\nI should greet.\n", "</think>", "\n\nHello there!"],
            QWEN_OFF: ["Hello", " without", " thinking."],
        },
    )
    write_qwen(
        models / "qwen-tools" / "latest",
        {QWEN_OPEN: ["<think>", "Need the weather.", "</think>", "\n\n", QWEN_CALL]},
    )


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("anthropic-home")
    _models(home / "models")
    s = serve_scripted(home, "anthropic", "mistral-call", 3, "--api-key", KEY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def ant(keyed: Server) -> anthropic.Anthropic:
    """Claude Code's way with ANTHROPIC_API_KEY: the key in x-api-key."""
    return anthropic.Anthropic(
        base_url=keyed.url,
        api_key=None,
        auth_token=None,
        default_headers={"x-api-key": KEY, "anthropic-beta": "interleaved-thinking-2025-05-14"},
        timeout=60,
        max_retries=0,
    )


def test_api_key_as_x_api_key_or_bearer(keyed: Server, ant: anthropic.Anthropic) -> None:
    kw: dict[str, Any] = {"model": "qwen-think", "max_tokens": 16, "messages": HI}
    assert strict(ant.messages.create(**kw)).content
    bearer = anthropic.Anthropic(base_url=keyed.url, auth_token=KEY, max_retries=0)
    assert bearer.messages.count_tokens(model="qwen-think", messages=HI).input_tokens > 0
    for wrong in (
        anthropic.Anthropic(base_url=keyed.url, auth_token="nope", max_retries=0),
        anthropic.Anthropic(
            base_url=keyed.url,
            api_key=None,
            default_headers={"x-api-key": "nope"},
            max_retries=0,
        ),
    ):
        with pytest.raises(anthropic.AuthenticationError) as e:
            wrong.messages.create(**kw)
        assert error_of(e.value)["type"] == "authentication_error"
    # x-api-key opens the other APIs' routes too
    r = httpx.get(keyed.url + "/v1/models", headers={"x-api-key": KEY}, timeout=30)
    assert r.status_code == 200


def test_thinking_blocks_come_first_and_stream(ant: anthropic.Anthropic) -> None:
    kw: dict[str, Any] = {
        "model": "qwen-think",
        "max_tokens": 32,
        "messages": HI,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    m = strict(ant.messages.create(**kw))
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].type == "thinking" and m.content[0].thinking == "I should greet."
    assert m.content[1].type == "text" and m.content[1].text == "Hello there!"
    assert m.stop_reason == "end_turn"
    with ant.messages.stream(**kw) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert blocks(final) == blocks(m)
    assert "thinking" in kinds and kinds.index("thinking") < kinds.index("text")
    # Not asked for, as Anthropic: no thinking block (the model's default, Qwen thinking, runs
    # and is dropped), so content[0] is the text; adaptive shows it; disabled, the template
    # skips it
    default = strict(ant.messages.create(**{**kw, "thinking": None}))
    assert [b.type for b in default.content] == ["text"]
    assert default.content[0].type == "text" and default.content[0].text == m.content[1].text  # type: ignore[union-attr]
    adaptive = strict(ant.messages.create(**{**kw, "thinking": {"type": "adaptive"}}))
    assert [b.type for b in adaptive.content] == ["thinking", "text"]
    off = strict(ant.messages.create(**{**kw, "thinking": {"type": "disabled"}}))
    assert [(b.type, getattr(b, "text", None)) for b in off.content] == [
        ("text", "Hello without thinking.")
    ]
    # thinking handed back in an assistant turn is taken
    history = [*HI, m.to_param(), {"role": "user", "content": "Again"}]
    assert strict(ant.messages.create(**{**kw, "messages": history})).content


def test_stop_sequences(ant: anthropic.Anthropic) -> None:
    kw: dict[str, Any] = {
        "model": "qwen-think",
        "max_tokens": 32,
        "messages": HI,
        "thinking": {"type": "disabled"},
        "stop_sequences": ["thinking", "never"],
    }
    m = strict(ant.messages.create(**kw))
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == "thinking"
    assert m.content[0].type == "text" and m.content[0].text == "Hello without "
    with ant.messages.stream(**kw) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == "thinking"
    assert blocks(final) == blocks(m)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_round_trip(ant: anthropic.Anthropic, stream: bool) -> None:
    kw: dict[str, Any] = {"model": "mistral-call", "max_tokens": 64, "tools": WEATHER}
    ask: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    if stream:
        with ant.messages.stream(messages=ask, **kw) as s:
            text = "".join(s.text_stream)
            first = s.get_final_message()
        assert text == "Let me check."
    else:
        first = strict(ant.messages.create(messages=ask, **kw))
    assert first.stop_reason == "tool_use"
    text_block, use = first.content
    assert text_block.type == "text" and text_block.text == "Let me check."
    assert use.type == "tool_use" and use.name == "get_weather"
    assert use.input == {"city": "Paris"} and MISTRAL_ID.fullmatch(use.id)
    history: list[Any] = [
        *ask,
        first.to_param(),
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
        },
    ]
    second = strict(ant.messages.create(messages=history, **kw))
    assert second.stop_reason == "end_turn"
    assert [b.text for b in second.content if b.type == "text"] == ["It is sunny in Paris."]


def test_thinking_then_a_streamed_tool_use(ant: anthropic.Anthropic) -> None:
    kw: dict[str, Any] = {
        "model": "qwen-tools",
        "max_tokens": 64,
        "tools": WEATHER,
        "messages": [{"role": "user", "content": "Weather?"}],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    whole = strict(ant.messages.create(**kw))
    events = [
        EVENT.validate_python(e.model_dump(mode="json"))
        for e in ant.messages.create(stream=True, **kw)
    ]
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert "thinking_delta" in deltas and deltas[-1] == "input_json_delta"
    with ant.messages.stream(**kw) as s:
        final = s.get_final_message()
    for m in (whole, final):
        assert [b.type for b in m.content] == ["thinking", "tool_use"]
        assert m.stop_reason == "tool_use"
        use = m.content[1]
        assert use.type == "tool_use" and use.input == {"city": "Paris"}
        assert use.id.startswith("toolu_")
    pick = {
        "name": "pick",
        "input_schema": {
            "type": "object",
            "properties": {"c": {"enum": ["P", "O"]}},
            "required": ["c"],
            "additionalProperties": False,
        },
    }
    forced = strict(
        ant.messages.create(
            **{**kw, "tools": [pick], "tool_choice": {"type": "tool", "name": "pick"}},
            extra_body={"seed": 1},
        )
    )
    assert [b.type for b in forced.content] == ["tool_use"] and forced.stop_reason == "tool_use"
    assert forced.content[0].type == "tool_use" and forced.content[0].input["c"] in ("P", "O")
