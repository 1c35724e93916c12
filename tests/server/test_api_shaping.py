"""Output shaping and prompt helpers of the Ollama API: thinking split across stream deltas,
the Go-template subset, FIM prompts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ember.errors import InvalidRequestError
from ember.outputs import CompletionOutput, RequestMetrics, RequestOutput
from ember.server.ollama_generate import _chunks, _Shape
from ember.server.ollama_prompt import fit_messages, prompt_limit, render_go_template
from ember.tokenizer.reasoning import Start, ThinkSplitter


@pytest.mark.parametrize(
    "pieces",
    [
        ["<think>abc</think>\n\nhello"],
        ["<th", "ink>a", "bc</th", "ink>", "\nhel", "lo"],
        ["<think>", "\n", "abc", "\n", "</think>", "\n\n", "hello"],  # Ollama drops newlines
    ],
)
def test_thinking_split_across_deltas(pieces: list[str]) -> None:
    s = ThinkSplitter(Start.OPEN_TAG, trim=True)
    thinking, content = "", ""
    for p in pieces:
        t, c = s.feed(p)
        thinking, content = thinking + t, content + c
    t, c = s.flush()
    assert (thinking + t, content + c) == ("abc", "hello")


def test_thinking_when_prompt_opens_it_and_plain_content() -> None:
    s = ThinkSplitter(Start.THINKING, trim=True)
    assert s.feed("x</think>y") == ("x", "y")
    s = ThinkSplitter(Start.OPEN_TAG, trim=True)
    assert s.feed("no tags") == ("", "no tags")


def test_go_template_subset() -> None:
    t = "{{- if .System }}<s>{{ .System }}</s>\n{{- else }}none{{ end }} {{ .Prompt }}"
    assert render_go_template(t, {"System": "S", "Prompt": "P"}) == "<s>S</s> P"
    assert render_go_template(t, {"System": "", "Prompt": "P"}) == "none P"
    with pytest.raises(InvalidRequestError):
        render_go_template("{{ .Messages }}", {})
    with pytest.raises(InvalidRequestError):
        render_go_template("{{ if .System }}x", {})


def _outs(pieces: list[str]) -> list[RequestOutput]:
    outs = []
    for i, text in enumerate(pieces):
        last = i == len(pieces) - 1
        delta = CompletionOutput(0, text, [i], finish_reason="stop" if last else None)
        outs.append(RequestOutput("r", None, [1], [delta], last, RequestMetrics(0.0)))
    return outs


async def _stream(pieces: list[str], whole: bool = False) -> list[dict[str, Any]]:
    async def gen() -> AsyncIterator[RequestOutput]:
        for out in _outs(pieces):
            yield out

    shape = _Shape("message", str, tools=True)
    return [c async for c in _chunks(gen(), "m", shape, lambda o, ids: {"done": True}, whole=whole)]


def test_ollama_stream_holds_a_tool_call_and_streams_text() -> None:
    call = ["<tool", '_call>{"name": "w", ', '"arguments": {"c": "P"}}</tool_call>']
    chunks = asyncio.run(_stream(call))
    assert all(not c["message"]["content"] for c in chunks)
    assert chunks[-1]["message"]["tool_calls"][0]["function"] == {
        "index": 0,
        "name": "w",
        "arguments": {"c": "P"},
    }
    chunks = asyncio.run(_stream(["Hel", "lo", "!"]))
    assert [c["message"]["content"] for c in chunks] == ["Hel", "lo", "!", ""]
    assert "tool_calls" not in chunks[-1]["message"]


@pytest.mark.parametrize(
    "pieces",
    [
        [
            "Sure, ",
            "checking. ",
            "<tool_call>",
            '{"name": "w", "arguments": {"c": "P"}}',
            "</tool_call>",
        ],
        ["Sure, checking. <tool", '_call>{"name": "w", "arguments": {"c": "P"}}</tool_call>'],
        ["Sure, checking.", " <|python_tag|>", '{"name": "w", "parameters": {"c": "P"}}'],
    ],
)
def test_ollama_stream_sends_a_call_after_text_only_as_tool_calls(pieces: list[str]) -> None:
    chunks = asyncio.run(_stream(pieces))
    streamed = "".join(c["message"]["content"] for c in chunks)
    assert "<" not in streamed and streamed == "Sure, checking."
    (whole,) = asyncio.run(_stream(pieces, whole=True))[-1:]
    assert whole["message"]["content"] == streamed
    assert chunks[-1]["message"]["tool_calls"] == whole["message"]["tool_calls"]
    assert [c["function"]["name"] for c in whole["message"]["tool_calls"]] == ["w"]


def test_ollama_stream_sends_markup_that_is_no_call_as_content() -> None:
    pieces = ["See ", "<tool_call>{not json", "</tool_call> ok"]
    chunks = asyncio.run(_stream(pieces))
    assert "".join(c["message"]["content"] for c in chunks) == "".join(pieces)
    assert "tool_calls" not in chunks[-1]["message"]


def _render(msgs: list[dict[str, Any]]) -> tuple[str, list[int]]:
    """A stand-in chat template, one token per character."""
    text = "^" + "".join(f"<{m['role']}>{m['content']}</>" for m in msgs) + "<gen>"
    return text, [ord(c) for c in text]


def test_prompt_limit_leaves_room_for_the_reply() -> None:
    assert prompt_limit(100, 512, None) == 100  # fits: kept whole
    assert prompt_limit(100, 512, 400) == 100
    assert prompt_limit(600, 512, 8) == 504  # num_predict's room
    assert prompt_limit(600, 512, None) == 384  # a quarter of the context
    assert prompt_limit(600, 512, 10_000) == 256  # the reply takes half at most
    assert prompt_limit(500, 512, 100) == 412  # fits alone, but not with its reply


def test_fit_messages_drops_old_turns_then_cuts_the_last_message_keeping_the_system() -> None:
    system = {"role": "system", "content": "SYS"}
    old = {"role": "user", "content": "old" * 10}
    last = {"role": "user", "content": "A" * 50 + "Z" * 50}
    _, ids = fit_messages([system, old, last], _render, lambda n: min(n, 80), None)
    text = "".join(chr(i) for i in ids)
    assert len(ids) == 80 and "old" not in text
    assert text.startswith("^<system>SYS</><user>") and text.endswith("Z" * 50 + "</><gen>")
    _, ids = fit_messages([system, last], _render, lambda n: min(n, 200), None)
    assert ids == _render([system, last])[1]  # fits: untouched
