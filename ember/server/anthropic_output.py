"""What /v1/messages sends back: the message object (content blocks: `thinking`, then `text`,
then `tool_use`), and the SSE events of a stream, each `event: <type>` plus `data: {...}`, in
Anthropic's order: message_start, for each block content_block_start / _delta... / _stop, then
message_delta (stop reason, usage) and message_stop; an `error` event if it fails midway."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from ember.server.errors import anthropic_error
from ember.server.streaming import dumps


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


@dataclass(slots=True)
class ToolUse:
    id: str  # toolu_... (9 alphanumerics for Mistral's templates)
    name: str
    input: dict[str, Any]

    def block(self) -> dict[str, Any]:
        return {"type": "tool_use", "id": self.id, "name": self.name, "input": self.input}


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens found in the prefix cache

    def json(self) -> dict[str, Any]:
        # Anthropic's input_tokens leaves out the cache reads: clients add the three up to
        # know how full the context is (Claude Code compacts by it).
        return {
            "input_tokens": self.prompt_tokens - self.cached_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": self.cached_tokens,
            "output_tokens": self.output_tokens,
        }


@dataclass(slots=True)
class Reply:
    """The model's reply as content blocks, and why it ended."""

    thinking: str  # "": no thinking block
    text: str  # "": no text block
    calls: list[ToolUse]
    stop_reason: str  # end_turn, max_tokens, stop_sequence or tool_use
    stop_sequence: str | None = None

    def blocks(self) -> list[dict[str, Any]]:
        out = [thinking_block(self.thinking)] if self.thinking else []
        out += [text_block(self.text)] if self.text else []
        return out + [c.block() for c in self.calls]


def thinking_block(text: str) -> dict[str, Any]:
    # No signature: it is Anthropic's proof of its own model's thinking; clients send it back
    # as they got it, and ember reads none.
    return {"type": "thinking", "thinking": text, "signature": ""}


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


@dataclass(slots=True)
class MessageHead:
    id: str
    model: str  # as the client named it

    def json(
        self,
        content: list[dict[str, Any]],
        usage: Usage,
        stop_reason: str | None = None,
        stop_sequence: str | None = None,
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": usage.json(),
        }


@dataclass(slots=True)
class Events:
    """The SSE events of one streamed message; blocks are numbered as they open, and the open
    one is closed before the next opens."""

    head: MessageHead
    _index: int = -1
    _open: str | None = None  # the type of the open block

    @staticmethod
    def event(kind: str, **fields: Any) -> str:
        return f"event: {kind}\ndata: {dumps({'type': kind, **fields})}\n\n"

    def start(self, usage: Usage) -> str:
        return self.event("message_start", message=self.head.json([], usage))

    def thinking(self, text: str) -> list[str]:
        return self._delta(
            "thinking", thinking_block(""), {"type": "thinking_delta", "thinking": text}
        )

    def text(self, text: str) -> list[str]:
        return self._delta("text", text_block(""), {"type": "text_delta", "text": text})

    def tool_use(self, call: ToolUse) -> list[str]:
        """A whole call: opened with an empty input, the input's JSON in one delta."""
        out = self._close()
        out += self._open_block("tool_use", {**call.block(), "input": {}})
        delta = {"type": "input_json_delta", "partial_json": dumps(call.input)}
        out.append(self.event("content_block_delta", index=self._index, delta=delta))
        return out + self._close()

    def end(self, reply: Reply, usage: Usage) -> list[str]:
        out = self._close()
        delta = {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence}
        out.append(self.event("message_delta", delta=delta, usage=usage.json()))
        out.append(self.event("message_stop"))
        return out

    def error(self, status: int, message: str) -> str:
        return f"event: error\ndata: {dumps(anthropic_error(status, message))}\n\n"

    def _delta(self, kind: str, opened: dict[str, Any], delta: dict[str, Any]) -> list[str]:
        out: list[str] = []
        if self._open != kind:
            out = self._close() + self._open_block(kind, opened)
        out.append(self.event("content_block_delta", index=self._index, delta=delta))
        return out

    def _open_block(self, kind: str, block: dict[str, Any]) -> list[str]:
        self._index += 1
        self._open = kind
        return [self.event("content_block_start", index=self._index, content_block=block)]

    def _close(self) -> list[str]:
        if self._open is None:
            return []
        self._open = None
        return [self.event("content_block_stop", index=self._index)]
