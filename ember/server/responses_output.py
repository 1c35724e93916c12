"""What /v1/responses sends back: the response object, its output items (with --reasoning-parser
a `reasoning` item of `reasoning_text`, then an assistant `message` of `output_text` parts, then
`function_call` items), and the typed SSE events of a stream, each `event: <type>` plus
`data: {...}` with a `sequence_number`, as OpenAI sends them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from ember.sampling_params import SamplingParams
from ember.server.protocol_responses import ResponsesRequest
from ember.server.streaming import dumps


def new_item_id(prefix: str) -> str:
    """OpenAI's ids: resp_..., msg_..., fc_..., call_..."""
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(slots=True)
class FunctionCall:
    name: str
    arguments: str  # JSON text, as the model wrote it
    call_id: str = field(default_factory=lambda: new_item_id("call"))
    item_id: str = field(default_factory=lambda: new_item_id("fc"))

    def item(self, status: str = "completed") -> dict[str, Any]:
        return {
            "type": "function_call",
            "id": self.item_id,
            "call_id": self.call_id,
            "name": self.name,
            "arguments": self.arguments,
            "status": status,
        }


@dataclass(slots=True)
class Thought:
    """The reply's reasoning, split out by --reasoning-parser: a `reasoning` output item."""

    text: str
    closed: bool  # the reply left its thinking (else it was cut short inside it)
    item_id: str = field(default_factory=lambda: new_item_id("rs"))

    def status(self, incomplete: bool) -> str:
        return "incomplete" if incomplete and not self.closed else "completed"


@dataclass(slots=True)
class Reply:
    """The model's reply as output items: its reasoning (None or empty: no reasoning item), its
    text (None: no message item) and its calls, in that order (vLLM's)."""

    text: str | None
    calls: list[FunctionCall]
    incomplete: bool  # cut short by max_output_tokens (or the context's end)
    message_id: str = field(default_factory=lambda: new_item_id("msg"))
    thought: Thought | None = None

    def items(self) -> list[dict[str, Any]]:
        out = []
        if self.thought is not None and self.thought.text:
            thought = self.thought
            out.append(
                reasoning_item(thought.item_id, thought.text, thought.status(self.incomplete))
            )
        if self.text is not None:
            out.append(message_item(self.message_id, self.text, self.status))
        return out + [c.item(self.status) for c in self.calls]

    @property
    def status(self) -> str:
        return "incomplete" if self.incomplete else "completed"


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    """An assistant message; text None: just opened, with no parts yet."""
    return {
        "type": "message",
        "id": item_id,
        "role": "assistant",
        "status": status,
        "content": [] if text is None else [text_part(text)],
    }


def reasoning_part(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}


def reasoning_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    """A reasoning item as vLLM sends it: the text as one `reasoning_text` part, no summary;
    text None: just opened, with no parts yet."""
    return {
        "type": "reasoning",
        "id": item_id,
        "summary": [],
        "content": [] if text is None else [reasoning_part(text)],
        "status": status,
    }


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0  # input tokens found in the prefix cache
    reasoning_tokens: int = 0  # output tokens inside the thinking (0 when not exactly known)

    def json(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            # cache_write_tokens: the client's type requires it; ember's cache is not billed
            "input_tokens_details": {"cached_tokens": self.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.input_tokens + self.output_tokens,
        }


@dataclass(slots=True)
class ResponseHead:
    """What every state of one response shares: its id, and the request settings it repeats."""

    id: str
    created_at: int
    model: str  # as the client named it
    body: ResponsesRequest
    params: SamplingParams  # the effective ones, repeated as temperature and top_p

    def json(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: Usage | None,
        error: str | None = None,
    ) -> dict[str, Any]:
        """The response object; `error` the message of a failed one."""
        body = self.body
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": {"code": "server_error", "message": error} if error else None,
            "incomplete_details": (
                {"reason": "max_output_tokens"} if status == "incomplete" else None
            ),
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "metadata": body.metadata or {},
            "model": self.model,
            "output": output,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": None,
            "reasoning": body.reasoning,
            "store": False,  # ember stores no responses
            "temperature": self.params.temperature,
            "text": body.text_echo,
            "tool_choice": body.tool_choice_echo,
            "tools": body.tools_echo(),
            "top_p": self.params.top_p,
            "truncation": body.truncation or "disabled",
            "usage": usage.json() if usage is not None else None,
            "user": body.user,
        }


class Events:
    """The SSE events of one streamed response, numbered in the order they are made."""

    def __init__(self, head: ResponseHead) -> None:
        self.head = head
        self._seq = 0

    def event(self, kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return f"event: {kind}\ndata: {dumps(data)}\n\n"

    def lifecycle(
        self,
        kind: str,
        status: str,
        output: list[dict[str, Any]],
        usage: Usage | None = None,
        error: str | None = None,
    ) -> str:
        """response.created / in_progress / completed / incomplete / failed, with the whole
        response."""
        return self.event(kind, response=self.head.json(status, output, usage, error))

    def error(self, status: int, message: str, param: str | None) -> str:
        return self.event("error", code=str(status), message=message, param=param)

    # A reasoning item: opened, its text in deltas, closed (vLLM's events) ----------------------

    def open_reasoning(self, index: int, item_id: str) -> list[str]:
        where = {"output_index": index, "item_id": item_id}
        return [
            self.event(
                "response.output_item.added",
                output_index=index,
                item=reasoning_item(item_id, None, "in_progress"),
            ),
            self.event(
                "response.content_part.added", **where, content_index=0, part=reasoning_part("")
            ),
        ]

    def reasoning_delta(self, index: int, item_id: str, delta: str) -> str:
        return self.event(
            "response.reasoning_text.delta",
            output_index=index,
            item_id=item_id,
            content_index=0,
            delta=delta,
        )

    def close_reasoning(self, index: int, item_id: str, text: str, status: str) -> list[str]:
        where = {"output_index": index, "item_id": item_id, "content_index": 0}
        return [
            self.event("response.reasoning_text.done", **where, text=text),
            self.event("response.content_part.done", **where, part=reasoning_part(text)),
            self.event(
                "response.output_item.done",
                output_index=index,
                item=reasoning_item(item_id, text, status),
            ),
        ]

    # A message item: opened, its text in deltas, closed ---------------------------------------

    def open_message(self, index: int, item_id: str) -> list[str]:
        where = {"output_index": index, "item_id": item_id}
        return [
            self.event(
                "response.output_item.added",
                output_index=index,
                item=message_item(item_id, None, "in_progress"),
            ),
            self.event("response.content_part.added", **where, content_index=0, part=text_part("")),
        ]

    def text_delta(self, index: int, item_id: str, delta: str) -> str:
        return self.event(
            "response.output_text.delta",
            output_index=index,
            item_id=item_id,
            content_index=0,
            delta=delta,
            logprobs=[],
        )

    def close_message(self, index: int, item_id: str, text: str, status: str) -> list[str]:
        where = {"output_index": index, "item_id": item_id, "content_index": 0}
        return [
            self.event("response.output_text.done", **where, text=text, logprobs=[]),
            self.event("response.content_part.done", **where, part=text_part(text)),
            self.event(
                "response.output_item.done",
                output_index=index,
                item=message_item(item_id, text, status),
            ),
        ]

    # A function call item, sent whole once the reply has ended ---------------------------------

    def function_call(self, index: int, call: FunctionCall, status: str) -> list[str]:
        where = {"output_index": index, "item_id": call.item_id}
        opened = {**call.item("in_progress"), "arguments": ""}
        return [
            self.event("response.output_item.added", output_index=index, item=opened),
            self.event("response.function_call_arguments.delta", **where, delta=call.arguments),
            self.event(
                "response.function_call_arguments.done",
                **where,
                name=call.name,
                arguments=call.arguments,
            ),
            self.event("response.output_item.done", output_index=index, item=call.item(status)),
        ]
