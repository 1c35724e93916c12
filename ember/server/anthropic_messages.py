"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API, as Ollama, vLLM
and llama.cpp serve it, so that Anthropic's clients and Claude Code (ANTHROPIC_BASE_URL) run
on a local model.

The request becomes the chat request /v1/chat/completions runs (protocol_anthropic.py), and
runs the same way: the same prompt rendering, sampling, tool modes and tool-call parsing,
admission, metrics, timeouts and aborts. Only the reply's shape differs (anthropic_output.py).

Thinking: for a model whose template knows of thinking, the reply's <think>...</think> becomes
a `thinking` block, split as Ollama splits `think` (whitespace trimmed; with
--reasoning-parser, a reply that never opens the tag is thinking until it closes it, as the
chat route reads it). With thinking disabled the template is told so, and any thinking the
model still writes is dropped; asked of a model that cannot think, thinking is ignored rather
than refused, so that a client that always asks (Claude Code) still works.

Streaming follows the chat route: thinking and text stream as they come; with tools ("auto") a
reply that opens like a tool call is held back and sent as tool_use blocks at the end; with a
forced call (tool_choice any / tool) the whole reply is held.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ember.errors import EmberError, InvalidRequestError
from ember.outputs import CompletionOutput
from ember.server.anthropic_output import (
    Events,
    MessageHead,
    Reply,
    ToolUse,
    Usage,
    new_message_id,
)
from ember.server.context import Prepared, get_context, read_json
from ember.server.formats import forced_call_grammar
from ember.server.openai_chat import chat_prompt, keep_call_markup
from ember.server.openai_common import ABORTED, Choices, merge, start_choices
from ember.server.protocol_anthropic import Converted, MessagesRequest
from ember.server.streaming import OwnedStreamingResponse
from ember.tokenizer.reasoning import (
    Start,
    ThinkSplitter,
    prompt_start,
    split_piece,
    split_reasoning,
    supports_thinking,
)
from ember.tokenizer.tool_calls import (
    ToolCallGate,
    mistral_calls,
    new_call_id,
    read_reply,
    tool_names,
)

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine

log = logging.getLogger("ember.server")

router = APIRouter()


@dataclass(slots=True)
class _Shape:
    """How the model's text becomes content blocks."""

    mode: str  # chat's tool mode: "none", "auto", "required" or "named"
    forced: str | None  # the named tool
    names: frozenset[str]  # the offered tools' names
    stop_sequences: list[str]
    start: Start | None = None  # where the reply starts, to split thinking off; None: do not
    show_thinking: bool = True  # False: not asked for; what the model thought is dropped
    mistral: bool = False  # Mistral's tool call ids: 9 alphanumerics

    def reply(
        self, text: str, thinking: str, finish_reason: str | None, stop_reason: int | str | None
    ) -> Reply:
        """The reply's blocks from its text (thinking split off), parsed as the chat route
        parses it; a forced call cut short stays text."""
        parsed = read_reply(text, self.mode, self.forced, self.names)
        content = parsed.content if parsed.tool_calls else text
        uses = [ToolUse(c.id or self.call_id(), c.name, c.arguments) for c in parsed.tool_calls]
        reply = Reply(thinking if self.show_thinking else "", content, uses, "end_turn")
        if finish_reason == "length":
            reply.stop_reason = "max_tokens"
        elif uses:
            reply.stop_reason = "tool_use"
        elif isinstance(stop_reason, str) and stop_reason in self.stop_sequences:
            reply.stop_reason, reply.stop_sequence = "stop_sequence", stop_reason
        return reply

    def call_id(self) -> str:
        return new_call_id(self.mistral, prefix="toolu_")


def _prompt(
    engine: AsyncEngine, conv: Converted, messages: list[dict[str, Any]]
) -> tuple[str, list[int]]:
    """The prompt /v1/messages runs (and count_tokens counts)."""
    tools = conv.chat.tools if conv.mode != "none" else None
    return chat_prompt(engine, conv.chat, messages, tools)


@router.post("/v1/messages")
async def messages(request: Request) -> Response:
    ctx = get_context(request)
    body = await read_json(request, MessagesRequest)
    conv = body.convert()
    chat, mode = conv.chat, conv.mode
    tools = chat.tools if mode != "none" else None
    shape = _Shape(
        mode,
        conv.forced,
        tool_names(tools),
        conv.stop_sequences,
        # As Anthropic: thinking blocks only when the request asks for them (enabled, adaptive);
        # without `thinking` the model keeps its default, and what it thinks is dropped.
        show_thinking=body.thinking is not None and conv.think is not False,
    )
    structured = forced_call_grammar(mode, chat.tools, conv.forced, chat.parallel_tool_calls)
    ctx.served.require(body.model)
    history = [m.for_template() for m in chat.messages]

    def prepare(engine: AsyncEngine) -> Prepared:
        text, ids = _prompt(engine, conv, history)
        max_tokens = _fit(chat.requested_max_tokens, len(ids), engine.max_model_len)
        params = chat.sampling_params(max_tokens, None, 0, structured)
        keep_call_markup(params, mode, engine.tokenizer)
        return Prepared(ids, params, text)

    rid = new_message_id()
    choices = await start_choices(ctx, request, rid, [prepare])
    tok = choices.engine.tokenizer
    shape.mistral = mistral_calls(tok)
    # A grammar constrains the whole output (a forced call): nothing to split.
    if structured is None and supports_thinking(tok.chat_template):
        parser = ctx.config.reasoning_parser is not None and conv.think is not False
        shape.start = prompt_start(
            choices.prepared[0].prompt, Start.THINKING if parser else Start.OPEN_TAG
        )
    head = MessageHead(rid, body.model or ctx.served.name)  # the name the client sent
    if not body.stream:
        return JSONResponse(await _whole(request, choices, head, shape))
    stream = _stream(choices, Events(head), shape)
    return OwnedStreamingResponse(stream, choices.aclose, "text/event-stream")


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> dict[str, int]:
    """The prompt's tokens, as /v1/messages would render it for the same body."""
    ctx = get_context(request)
    body = await read_json(request, MessagesRequest)
    conv = body.convert(count_only=True)
    ctx.served.require(body.model)
    engine, _ = await ctx.wait_ready(request)
    history = [m.for_template() for m in conv.chat.messages]
    _, ids = await asyncio.to_thread(_prompt, engine, conv, history)
    return {"input_tokens": len(ids)}


async def _whole(
    request: Request, choices: Choices, head: MessageHead, shape: _Shape
) -> dict[str, Any]:
    try:
        outs = await choices.gens[0].collect(request)
    finally:
        await choices.aclose()
    out = merge(outs)
    usage = Usage(choices.prompt_tokens(), len(out.token_ids), outs[-1].num_cached_tokens)
    if out.finish_reason == "abort":
        raise EmberError(ABORTED)
    thinking, text = "", out.text
    if shape.start is not None:
        thinking, text = split_reasoning(text, shape.start, trim=True)
    reply = shape.reply(text, thinking, out.finish_reason, out.stop_reason)
    return head.json(reply.blocks(), usage, reply.stop_reason, reply.stop_sequence)


async def _stream(choices: Choices, ev: Events, shape: _Shape) -> AsyncIterator[str]:
    splitter = ThinkSplitter(shape.start, trim=True) if shape.start is not None else None
    gate = ToolCallGate() if shape.mode == "auto" else None
    full = sent = thinking = ""  # the reply's text past its thinking; the text sent as deltas
    usage = Usage(choices.prompt_tokens())
    last: CompletionOutput | None = None
    started = False
    try:
        async for _, out in choices.stream():
            if not started:  # the first output knows the prefix cache's hits
                usage.cached_tokens = out.num_cached_tokens
                yield ev.start(usage)
                started = True
            delta = out.outputs[0]
            usage.output_tokens += len(delta.token_ids)
            reasoning, text = split_piece(splitter, delta.text, out.finished)
            if reasoning and shape.show_thinking:
                thinking += reasoning
                for e in ev.thinking(reasoning):
                    yield e
            full += text
            # "auto": what the gate lets through; a forced call is held whole
            now = text if shape.mode == "none" else gate.feed(text) if gate else ""
            if now:
                for e in ev.text(now):
                    yield e
                sent += now
            if out.finished:
                last = delta
    except EmberError as err:  # headers are sent; report in the stream
        yield ev.error(err.status_code, err.message)
        return
    except Exception as err:
        log.exception("error while streaming %s", ev.head.id)
        yield ev.error(500, f"internal error: {err}")
        return
    if last is None or last.finish_reason == "abort":
        yield ev.error(500, ABORTED)
        return
    reply = shape.reply(full, thinking, last.finish_reason, last.stop_reason)
    # What the reply still owes as text, as the chat route decides it.
    if shape.mode == "none":
        tail = ""
    elif reply.calls:
        tail = "" if gate is not None and gate.mode == "text" else reply.text
    else:
        tail = gate.held() if gate is not None else reply.text
    if tail:
        for e in ev.text(tail):
            yield e
    for call in reply.calls:
        for e in ev.tool_use(call):
            yield e
    for e in ev.end(reply, usage):
        yield e


def _fit(requested: int | None, prompt_len: int, max_model_len: int) -> int:
    """max_tokens within the context: Anthropic's clients ask for more than a small local
    context holds (Claude Code: 32000), so a larger max_tokens is cut to the room left and the
    reply ends with max_tokens there, rather than refused. A prompt that leaves no room is a
    400 in Anthropic's words, which Claude Code reads as its cue to compact the conversation."""
    room = max_model_len - prompt_len
    if room < 1:
        raise InvalidRequestError(
            f"prompt is too long: {prompt_len} tokens > {max_model_len - 1} maximum",
            param="messages",
        )
    return room if requested is None else min(requested, room)
