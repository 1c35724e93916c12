"""Shaping generated text for Ollama's responses: `logprobs` entries and `tool_calls` parsed from
it (`thinking` is split off by ember/tokenizer/reasoning.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ember.logprobs import Logprob, chosen, top
from ember.outputs import CompletionOutput
from ember.tokenizer.tool_calls import parse_tool_calls

Decode = Callable[[int], str]


def ollama_logprobs(out: CompletionOutput, decode: Decode, k: int) -> list[dict[str, Any]] | None:
    """Ollama's per-token logprobs for the tokens of `out` (a delta), with the `k`
    (top_logprobs) likeliest tokens of each position."""
    if out.logprobs is None:
        return None

    def item(token_id: int, lp: Logprob) -> dict[str, Any]:
        text = lp.decoded_token if lp.decoded_token is not None else decode(token_id)
        return {"token": text, "logprob": lp.logprob, "bytes": list(text.encode())}

    return [
        {**item(*chosen(position)), "top_logprobs": [item(*e) for e in top(position, k)]}
        for position in out.logprobs
    ]


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
