"""Shaping generated text for Ollama's responses: `logprobs` entries, `thinking` split from the
content, and `tool_calls` parsed from it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ember.outputs import CompletionOutput, Logprob
from ember.tokenizer.tool_calls import parse_tool_calls, partial_suffix

Decode = Callable[[int], str]

_OPEN, _CLOSE = "<think>", "</think>"


def ollama_logprobs(out: CompletionOutput, decode: Decode) -> list[dict[str, Any]] | None:
    """Ollama's per-token logprobs for the tokens of `out` (a delta)."""
    if out.logprobs is None:
        return None

    def item(lp: Logprob) -> dict[str, Any]:
        text = lp.decoded if lp.decoded is not None else decode(lp.token_id)
        return {"token": text, "logprob": lp.logprob, "bytes": list(text.encode())}

    return [{**item(e[0]), "top_logprobs": [item(lp) for lp in e[1:]]} for e in out.logprobs]


def supports_thinking(template: str | None) -> bool:
    return bool(template) and ("enable_thinking" in template or _OPEN in template)  # type: ignore[operator]


class ThinkingSplitter:
    """Splits streamed text into (thinking, content) around `<think>...</think>`. Holds back
    a tail that may be the start of a tag, so a tag split across deltas is still found."""

    def __init__(self, prompt_opens_thinking: bool) -> None:
        # Some templates end the generation prompt with <think>: the output starts inside it.
        self._state = "thinking" if prompt_opens_thinking else "start"
        self._buf = ""

    def feed(self, text: str) -> tuple[str, str]:
        self._buf += text
        thinking, content = "", ""
        while True:
            if self._state == "start":
                head = self._buf.lstrip()
                if head.startswith(_OPEN):
                    self._buf = head[len(_OPEN) :]
                    self._state = "thinking"
                    continue
                if _OPEN.startswith(head):  # maybe a tag still arriving (or only whitespace)
                    return thinking, content
                self._state = "content"
            if self._state == "thinking":
                end = self._buf.find(_CLOSE)
                if end < 0:
                    keep = partial_suffix(self._buf, _CLOSE)
                    thinking += self._buf[: len(self._buf) - keep]
                    self._buf = self._buf[len(self._buf) - keep :]
                    return thinking, content
                thinking += self._buf[:end]
                self._buf = self._buf[end + len(_CLOSE) :]
                self._state = "gap"
            if self._state == "gap":  # the whitespace between </think> and the answer
                self._buf = self._buf.lstrip()
                if not self._buf:
                    return thinking, content
                self._state = "content"
            content += self._buf
            self._buf = ""
            return thinking, content

    def flush(self) -> tuple[str, str]:
        rest, self._buf = self._buf, ""
        if self._state == "start":
            rest = rest.lstrip()
        return (rest, "") if self._state == "thinking" else ("", rest)


def tool_call_message(
    text: str, names: frozenset[str] | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """Content and Ollama `tool_calls` ({"function": {"name", "arguments"}}) from model output,
    calling the offered tools' `names`."""
    parsed = parse_tool_calls(text, names)
    calls = [
        {"function": {"index": i, "name": c.name, "arguments": c.arguments}}
        for i, c in enumerate(parsed.tool_calls)
    ]
    return parsed.content, calls
