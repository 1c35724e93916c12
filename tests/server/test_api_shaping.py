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
from ember.server.ollama_output import ThinkingSplitter
from ember.server.ollama_prompt import render_go_template


@pytest.mark.parametrize(
    "pieces", [["<think>abc</think>\n\nhello"], ["<th", "ink>a", "bc</th", "ink>", "\nhel", "lo"]]
)
def test_thinking_split_across_deltas(pieces: list[str]) -> None:
    s = ThinkingSplitter(prompt_opens_thinking=False)
    thinking, content = "", ""
    for p in pieces:
        t, c = s.feed(p)
        thinking, content = thinking + t, content + c
    t, c = s.flush()
    assert (thinking + t, content + c) == ("abc", "hello")


def test_thinking_when_prompt_opens_it_and_plain_content() -> None:
    s = ThinkingSplitter(prompt_opens_thinking=True)
    assert s.feed("x</think>y") == ("x", "y")
    s = ThinkingSplitter(prompt_opens_thinking=False)
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


async def _stream(pieces: list[str]) -> list[dict[str, Any]]:
    async def gen() -> AsyncIterator[RequestOutput]:
        for out in _outs(pieces):
            yield out

    shape = _Shape("message", str, tools=True)
    return [c async for c in _chunks(gen(), "m", shape, lambda o, ids: {"done": True}, whole=False)]


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
