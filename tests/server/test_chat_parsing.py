"""Replies shaped into tool calls and reasoning, on scripted models (see scripted.py) behind one
real `ember serve --reasoning-parser qwen3`: Mistral's [TOOL_CALLS] (a special token) on both
APIs, streamed and not, with text before the call, and a tool round trip through the real
Mistral v0.3 template; Qwen3 / DeepSeek-R1 style <think> on the OpenAI route (`reasoning`) and
Ollama's (`thinking`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from scripted import (
    MISTRAL_CALL,
    QWEN_CALL,
    QWEN_OFF,
    QWEN_OPEN,
    R1_TEMPLATE,
    serve_scripted,
    write_mistral,
    write_qwen,
)
from serverproc import Server

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
ASK = [{"role": "user", "content": "Weather in Paris?"}]
MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")


def _models(models: Path) -> None:
    ask, answered = "[INST]x[/INST]", "[/TOOL_RESULTS]"
    write_mistral(
        models / "mistral-call" / "latest",
        {ask: ["Let me check.", "[TOOL_CALLS]", MISTRAL_CALL], answered: ["It is sunny in Paris."]},
    )
    write_mistral(
        models / "mistral11" / "latest",
        {ask: ["[TOOL_CALLS]", "get_weather", "[ARGS]", '{"city": "Paris"}']},
    )
    write_qwen(
        models / "qwen-think" / "latest",
        {
            QWEN_OPEN: ["<think>", "\nI should greet.\n", "</think>", "\n\nHello there!"],
            QWEN_OFF: ["Hello without thinking."],
        },
    )
    write_qwen(
        models / "qwen-tools" / "latest",
        {QWEN_OPEN: ["<think>", "Need the weather.", "</think>", "\n\n", QWEN_CALL]},
    )
    write_qwen(
        models / "r1" / "latest",
        {QWEN_OPEN + "<think>\n": ["Because.", "</think>", "\n\nAnswer."], QWEN_OFF: ["Plain."]},
        R1_TEMPLATE,
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scripted-home")
    _models(path / "models")
    return path


def _serve(home: Path, name: str, *flags: str) -> Server:
    return serve_scripted(home, name, "mistral-call", 5, *flags)


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    s = _serve(home, "reasoning", "--reasoning-parser", "qwen3")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def oai(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", timeout=60)


@pytest.fixture(scope="module")
def oll(server: Server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=60)


def _chat(oai: openai.OpenAI, model: str, **kw: Any) -> Any:
    return oai.chat.completions.create(model=model, messages=kw.pop("messages", ASK), **kw)


def _stream(oai: openai.OpenAI, model: str, **kw: Any) -> list[dict[str, Any]]:
    """The streamed choice deltas, as dicts (extra fields such as `reasoning` included)."""
    chunks = _chat(oai, model, stream=True, **kw)
    return [
        {**c.choices[0].delta.model_dump(exclude_none=True), "finish": c.choices[0].finish_reason}
        for c in chunks
        if c.choices
    ]


def _joined(deltas: list[dict[str, Any]], key: str) -> str:
    return "".join(d.get(key) or "" for d in deltas)


# Mistral tool calls


def test_openai_mistral_call_with_text_before(oai: openai.OpenAI) -> None:
    choice = _chat(oai, "mistral-call", tools=TOOLS).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    [call] = choice.message.tool_calls or []
    assert MISTRAL_ID.fullmatch(call.id)
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]


def test_openai_mistral_call_streamed(oai: openai.OpenAI) -> None:
    deltas = _stream(oai, "mistral-call", tools=TOOLS)
    assert _joined(deltas, "content") == "Let me check."
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert len(calls) == 1 and MISTRAL_ID.fullmatch(calls[0]["id"])
    assert calls[0]["function"]["name"] == "get_weather"
    assert deltas[-1]["finish"] == "tool_calls"


def test_openai_mistral_v11_call(oai: openai.OpenAI) -> None:
    choice = _chat(oai, "mistral11", tools=TOOLS).choices[0]
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    deltas = _stream(oai, "mistral11", tools=TOOLS)
    assert not _joined(deltas, "content")
    assert [c["function"]["name"] for d in deltas for c in d.get("tool_calls", [])] == [
        "get_weather"
    ]


def test_without_tools_the_call_token_is_dropped_as_before(oai: openai.OpenAI) -> None:
    choice = _chat(oai, "mistral-call").choices[0]
    assert not choice.message.tool_calls and "[TOOL_CALLS]" not in (choice.message.content or "")


def test_openai_round_trip_through_the_mistral_v03_template(
    oai: openai.OpenAI, server: Server
) -> None:
    first = _chat(oai, "mistral-call", tools=TOOLS).choices[0].message
    [call] = first.tool_calls or []
    messages = [
        *ASK,
        first.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'},
    ]
    reply = _chat(oai, "mistral-call", messages=messages, tools=TOOLS).choices[0].message
    assert reply.content == "It is sunny in Paris." and not reply.tool_calls
    messages[-1]["tool_call_id"] = "call_1"  # not what Mistral's template accepts
    body = {"model": "mistral-call", "messages": messages, "tools": TOOLS}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and "length 9" in r.json()["error"]["message"]


def test_ollama_mistral_call(oll: ollama.Client) -> None:
    msg = oll.chat("mistral-call", messages=ASK, tools=TOOLS).message
    assert msg.content == "Let me check."
    [call] = msg.tool_calls or []
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    chunks = list(oll.chat("mistral-call", messages=ASK, tools=TOOLS, stream=True))
    assert "".join(c.message.content or "" for c in chunks) == "Let me check."
    calls = [tc for c in chunks for tc in c.message.tool_calls or []]
    assert [tc.function.name for tc in calls] == ["get_weather"]


def test_ollama_round_trip_without_ids_through_the_mistral_v03_template(
    oll: ollama.Client,
) -> None:
    first = oll.chat("mistral-call", messages=ASK, tools=TOOLS).message
    messages: list[Any] = [
        *ASK,
        first,
        {"role": "tool", "tool_name": "get_weather", "content": '{"sky": "sunny"}'},
    ]
    reply = oll.chat("mistral-call", messages=messages, tools=TOOLS).message
    assert reply.content == "It is sunny in Paris."


# Reasoning


def test_reasoning_is_split_out(oai: openai.OpenAI, server: Server) -> None:
    body = {"model": "qwen-think", "messages": ASK}
    msg = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).json()
    msg = msg["choices"][0]["message"]
    assert msg["reasoning"] == msg["reasoning_content"] == "\nI should greet.\n"
    assert msg["content"] == "\n\nHello there!"  # as vLLM: the text as the model wrote it
    deltas = _stream(oai, "qwen-think")
    assert _joined(deltas, "reasoning") == _joined(deltas, "reasoning_content") == msg["reasoning"]
    assert _joined(deltas, "content") == msg["content"]
    kinds = [k for d in deltas for k in ("reasoning", "content") if d.get(k)]
    assert kinds == sorted(kinds, key=["reasoning", "content"].index)  # reasoning first


def test_thinking_turned_off_gives_content_only(oai: openai.OpenAI) -> None:
    off = {"chat_template_kwargs": {"enable_thinking": False}}
    msg = _chat(oai, "qwen-think", extra_body=off).choices[0].message
    assert msg.content == "Hello without thinking."
    assert msg.model_extra is not None and msg.model_extra["reasoning"] is None
    deltas = _stream(oai, "qwen-think", extra_body=off)
    assert _joined(deltas, "content") == "Hello without thinking."
    assert not _joined(deltas, "reasoning")


def test_reasoning_effort_none_turns_thinking_off(oai: openai.OpenAI) -> None:
    """OpenAI's reasoning_effort reaches the template as vLLM passes it; "none" turns Qwen3's
    thinking off, as Ollama maps it to think false. An unknown effort is a 400."""
    msg = _chat(oai, "qwen-think", reasoning_effort="none").choices[0].message
    assert msg.content == "Hello without thinking."
    assert msg.model_extra is not None and msg.model_extra["reasoning"] is None
    msg = _chat(oai, "qwen-think", reasoning_effort="low").choices[0].message
    assert msg.model_extra is not None and msg.model_extra["reasoning"]
    with pytest.raises(openai.BadRequestError) as e:
        _chat(oai, "qwen-think", extra_body={"reasoning_effort": "max"})
    assert "reasoning_effort must be one of" in str(e.value)


def test_tool_calls_come_from_the_content_after_reasoning(oai: openai.OpenAI) -> None:
    msg = _chat(oai, "qwen-tools", tools=TOOLS).choices[0].message
    assert msg.model_extra is not None and msg.model_extra["reasoning"] == "Need the weather."
    assert msg.content is None
    assert [c.function.name for c in msg.tool_calls or []] == ["get_weather"]  # type: ignore[union-attr]
    deltas = _stream(oai, "qwen-tools", tools=TOOLS)
    assert _joined(deltas, "reasoning") == "Need the weather."
    assert not _joined(deltas, "content").strip()
    assert [c["function"]["name"] for d in deltas for c in d.get("tool_calls", [])] == [
        "get_weather"
    ]


def test_prompt_opens_the_thinking_and_output_only_closes_it(oai: openai.OpenAI) -> None:
    msg = _chat(oai, "r1").choices[0].message
    assert msg.model_extra is not None and msg.model_extra["reasoning"] == "Because."
    assert msg.content == "\n\nAnswer."
    deltas = _stream(oai, "r1")
    assert (_joined(deltas, "reasoning"), _joined(deltas, "content")) == ("Because.", "\n\nAnswer.")


def test_no_closing_tag(oai: openai.OpenAI) -> None:
    """Cut short before </think>: all reasoning; with thinking off in the prompt: all content."""
    choice = _chat(oai, "r1", max_tokens=1).choices[0]
    assert choice.finish_reason == "length" and choice.message.content is None
    assert choice.message.model_extra is not None
    assert choice.message.model_extra["reasoning"] == "Because."
    off = {"chat_template_kwargs": {"enable_thinking": False}}
    msg = _chat(oai, "r1", extra_body=off).choices[0].message
    assert msg.content == "Plain." and msg.model_extra is not None
    assert msg.model_extra["reasoning"] is None


def test_ollama_thinking_is_trimmed(oll: ollama.Client) -> None:
    msg = oll.chat("qwen-think", messages=ASK, think=True).message
    assert (msg.thinking, msg.content) == ("I should greet.", "Hello there!")
    chunks = list(oll.chat("qwen-think", messages=ASK, think=True, stream=True))
    thinking = "".join(c.message.thinking or "" for c in chunks)
    assert (thinking, "".join(c.message.content for c in chunks)) == (msg.thinking, msg.content)


def test_without_the_flag_thinking_stays_in_content(home: Path) -> None:
    s = _serve(home, "plain")
    try:
        body = {"model": "qwen-think", "messages": ASK}
        r = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=60).json()
    finally:
        s.stop()
    msg = r["choices"][0]["message"]
    assert msg["content"] == "<think>\nI should greet.\n</think>\n\nHello there!"
    assert "reasoning" not in msg and "reasoning_content" not in msg


def test_unknown_reasoning_parser_is_refused() -> None:
    cmd = [sys.executable, "-m", "ember.cli", "serve", "--reasoning-parser", "deepseek"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "--reasoning-parser" in done.stderr and "deepseek_r1, qwen3" in done.stderr
