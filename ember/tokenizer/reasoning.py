"""Reasoning split out of a reply: the text between `<think>` and `</think>`, for Ollama's
`think` / `thinking` and for vLLM's `--reasoning-parser` (`reasoning` on the OpenAI route).

The two APIs place the boundary the same way and differ in whitespace and in what a reply that
never closes its thinking means:
- vLLM (deepseek_r1, qwen3) keeps the text as the model wrote it, newlines around the tags
  included; output that never reaches `</think>` is all reasoning (it was cut short), unless the
  prompt already closed the thinking (Qwen3 with enable_thinking false): then it is all content.
- Ollama trims the thinking and the start of the content; a reply that does not open with
  `<think>` is all content, unless the prompt opened it.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

from ember.tokenizer.tool_calls import partial_suffix

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# vLLM's --reasoning-parser names that ember implements (all `<think>...</think>`).
REASONING_PARSERS = ("deepseek_r1", "qwen3")


class Start(Enum):
    """Where a reply starts, as the prompt leaves it."""

    THINKING = "thinking"  # inside the think block (an opening tag the model repeats is dropped)
    CONTENT = "content"  # after it: the prompt closed the thinking, all output is content
    OPEN_TAG = "open_tag"  # thinking only if the reply opens with <think> (Ollama's rule)


def prompt_start(prompt: str | None, default: Start) -> Start:
    """Where output starts after `prompt`: templates that end the generation prompt with
    `<think>` start it inside, ones that end it with `</think>` (thinking turned off) after it."""
    tail = (prompt or "").rstrip()
    if tail.endswith(THINK_OPEN):
        return Start.THINKING
    if tail.endswith(THINK_CLOSE):
        return Start.CONTENT
    return default


def supports_thinking(template: str | None) -> bool:
    """Whether a chat template knows of thinking (Ollama refuses `think` otherwise, and
    --reasoning-parser leaves other models' replies whole)."""
    text = template or ""
    return any(mark in text for mark in ("enable_thinking", THINK_OPEN, THINK_CLOSE))


def reply_start(
    parser: str | None,
    template: str | None,
    constrained: bool,
    template_kwargs: dict[str, Any] | None,
    prompt: str | None,
) -> Start | None:
    """Where a reply starts for vLLM's reasoning parser `parser`, or None to leave it whole: no
    parser, output constrained by a grammar (the whole output is the grammar's), or a model whose
    template knows no thinking (the flag is the server's, not one model's). Otherwise inside the
    thinking unless the prompt closed it (or, for qwen3, `template_kwargs` turned it off)."""
    if parser is None or constrained or not supports_thinking(template):
        return None
    if parser == "qwen3" and (template_kwargs or {}).get("enable_thinking") is False:
        return Start.CONTENT
    return prompt_start(prompt, Start.THINKING)


def count_reasoning_tokens(
    token_ids: Sequence[int],
    start: Start,
    closed: bool,
    open_id: int | None,
    close_id: int | None,
) -> int:
    """The reply's tokens inside its thinking, as vLLM counts them: after an opening <think>
    (from the first token when the prompt opened it), up to </think>. `closed`: whether the
    text split found the </think>; `open_id` / `close_id`: the tags' ids when each is one token.

    0 when the count could not be exact: a tag that is not one token, or a </think> the text
    has and the tokens do not (written in pieces)."""
    if start is Start.CONTENT or open_id is None or close_id is None:
        return 0
    ids = list(token_ids)
    end = ids.index(close_id) if close_id in ids else len(ids)
    if closed != (end < len(ids)):
        return 0
    head = ids[:end]
    if open_id in head:
        return len(head) - head.index(open_id) - 1
    return len(head) if start is Start.THINKING else 0


class ThinkSplitter:
    """Splits streamed text into (reasoning, content). Holds back the end of the text that may
    be the start of a tag, so a tag split across deltas is still found, and with `trim` the
    whitespace that Ollama drops (after <think>, before </think>, before the content).

    Invariant: every character fed comes out once, as reasoning or content, except the tags and
    (with `trim`) the dropped whitespace; flush() returns what is still held."""

    def __init__(self, start: Start, trim: bool = False) -> None:
        self._trim = trim
        # "lead": before a possible opening tag; "think"; "gap": after </think>, before content;
        # "content".
        self._state = {Start.THINKING: "lead", Start.CONTENT: "content"}.get(start, "lead")
        self._inside = start is Start.THINKING  # in "lead": thinking even without a tag
        self._buf = ""
        self._thought = False  # some reasoning has been seen (not only whitespace)
        self.closed = start is Start.CONTENT  # the reply has left its thinking

    def feed(self, text: str) -> tuple[str, str]:
        self._buf += text
        reasoning, content = "", ""
        if self._state == "lead":
            head = self._buf.lstrip()
            if head.startswith(THINK_OPEN):
                self._buf = head[len(THINK_OPEN) :]
                self._state = "think"
            elif THINK_OPEN.startswith(head):  # only whitespace, or a tag still arriving
                return "", ""
            elif self._inside:
                self._state = "think"
            else:
                self._state, self.closed = "content", True
        if self._state == "think":
            if self._trim and not self._thought:  # whitespace after <think> is dropped
                self._buf = self._buf.lstrip()
                self._thought = bool(self._buf)
            end = self._buf.find(THINK_CLOSE)
            if end < 0:
                keep = partial_suffix(self._buf, THINK_CLOSE)
                cut = len(self._buf) - keep
                if self._trim:  # whitespace before </think> is dropped: wait for what follows
                    cut = len(self._buf[:cut].rstrip())
                reasoning, self._buf = self._buf[:cut], self._buf[cut:]
                return reasoning, ""
            reasoning = self._buf[:end]
            if self._trim:
                reasoning = reasoning.rstrip()
            self._buf = self._buf[end + len(THINK_CLOSE) :]
            self._state, self.closed = ("gap" if self._trim else "content"), True
        if self._state == "gap":
            self._buf = self._buf.lstrip()
            if not self._buf:
                return reasoning, ""
            self._state = "content"
        content, self._buf = self._buf, ""
        return reasoning, content

    def flush(self) -> tuple[str, str]:
        """What is still held, at the end of the reply."""
        rest, self._buf = self._buf, ""
        if self._state == "lead":
            if self._inside:
                return (rest.strip() if self._trim else rest), ""
            return "", rest.lstrip()
        if self._state == "think":
            return (rest.rstrip() if self._trim else rest), ""
        return "", rest


def split_reasoning(text: str, start: Start, trim: bool = False) -> tuple[str, str]:
    """(reasoning, content) of a whole reply."""
    return split_piece(ThinkSplitter(start, trim), text, last=True)


def split_piece(splitter: ThinkSplitter | None, text: str, last: bool) -> tuple[str, str]:
    """(reasoning, content) of the next piece of a streamed reply; with `last`, what the splitter
    still held comes out too. No splitter: all content."""
    if splitter is None:
        return "", text
    reasoning, content = splitter.feed(text)
    if last:
        more_reasoning, more_content = splitter.flush()
        reasoning, content = reasoning + more_reasoning, content + more_content
    return reasoning, content
