"""POST /v1/responses, OpenAI's Responses API as vLLM and Ollama serve it (stateless).

The request becomes the chat request /v1/chat/completions runs (protocol_responses.py), and
runs the same way: the same prompt rendering, sampling params, tool modes and tool-call parsing,
admission, metrics and aborts. Only the reply's shape differs (responses_output.py): output
items instead of choices, and typed SSE events instead of chunks.

Streaming follows the chat route: text streams as it comes; with tools ("auto") a reply that
opens like a tool call is held back and sent as function_call items at the end; with a forced
call (tool_choice "required" or a named function) the whole reply is held.

With `ember serve --reasoning-parser`, the reply's <think>...</think> is split out as the chat
route splits it (same models, same rule for grammars) into a `reasoning` item before the
message, streamed first as `response.reasoning_text.delta` events, as vLLM does; tool calls are
parsed from the content after it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ember.engine.structured import StructuredSpec
from ember.errors import EmberError, InvalidRequestError
from ember.outputs import CompletionOutput
from ember.server.context import Prepared, get_context, read_json
from ember.server.formats import forced_call_grammar, openai_response_format
from ember.server.openai_chat import chat_prompt, keep_call_markup
from ember.server.openai_common import ABORTED, Choices, merge, start_choices
from ember.server.protocol_openai import ChatCompletionRequest, fit_max_tokens, now_s
from ember.server.protocol_responses import ResponsesRequest
from ember.server.responses_output import (
    Events,
    FunctionCall,
    Reply,
    ResponseHead,
    Thought,
    Usage,
    new_item_id,
)
from ember.server.streaming import OwnedStreamingResponse
from ember.tokenizer.reasoning import (
    THINK_CLOSE,
    THINK_OPEN,
    Start,
    ThinkSplitter,
    count_reasoning_tokens,
    reply_start,
    split_piece,
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
    from ember.tokenizer.tokenizer import Tokenizer

log = logging.getLogger("ember.server")

router = APIRouter()


class _ToolMode:
    """How a reply is read, as the chat route reads it: chat's tool mode ("none", "auto",
    "required", "named"), the forced tool, and the offered tools."""

    def __init__(self, chat: ChatCompletionRequest) -> None:
        self.mode = chat.tool_mode
        self.forced = chat.forced_tool if self.mode == "named" else None
        self.tools = chat.tools if self.mode != "none" else None
        self.names = tool_names(self.tools)
        self.mistral = False  # the model writes calls after Mistral's [TOOL_CALLS] token

    def structured(self, chat: ChatCompletionRequest) -> StructuredSpec | None:
        """The grammar of a forced call (as the chat route builds it), or of text.format."""
        forced = forced_call_grammar(self.mode, chat.tools, self.forced, chat.parallel_tool_calls)
        if forced is not None:
            if chat.response_format is not None:
                raise InvalidRequestError(
                    "text.format cannot be combined with a forced tool_choice", param="text.format"
                )
            return forced
        try:
            return openai_response_format(chat.response_format)
        except InvalidRequestError as e:  # worded for chat's response_format
            message = e.message.replace("response_format.json_schema", "text.format")
            message = message.replace("response_format", "text.format")
            raise InvalidRequestError(message, param="text.format") from None

    def reply(self, text: str, finish_reason: str | None) -> Reply:
        """The model's whole text as output items: its calls parsed as the chat route parses
        them, the text before them as the message."""
        incomplete = finish_reason == "length"
        if self.forced is not None:  # the named function's arguments, even cut short (vLLM)
            return Reply(None, [self._call(self.forced, text)], incomplete)
        parsed = read_reply(text, self.mode, None, self.names)
        items = [self._call(c.name, json.dumps(c.arguments), c.id) for c in parsed.tool_calls]
        content = parsed.content if items else text
        return Reply(content if content or not items else None, items, incomplete)

    def _call(self, name: str, arguments: str, call_id: str | None = None) -> FunctionCall:
        """A call item; `call_id` as the model wrote it (Mistral's), else a new one."""
        return FunctionCall(
            name, arguments, call_id=call_id or new_call_id(self.mistral, prefix="call_")
        )


class _Think:
    """The reply's thinking, split out of its text as it comes (--reasoning-parser)."""

    def __init__(self, start: Start, tok: Tokenizer) -> None:
        self._start = start
        self._splitter = ThinkSplitter(start)
        self._tag_ids = (tok.token_to_id(THINK_OPEN), tok.token_to_id(THINK_CLOSE))
        self.text = ""
        self.item_id = new_item_id("rs")

    @property
    def closed(self) -> bool:
        return self._splitter.closed

    def feed(self, text: str, last: bool) -> tuple[str, str]:
        """(reasoning, content) of the next piece of text; `last`: the reply ends with it."""
        reasoning, content = split_piece(self._splitter, text, last)
        self.text += reasoning
        return reasoning, content

    def thought(self) -> Thought:
        return Thought(self.text, self.closed, self.item_id)

    def tokens(self, token_ids: list[int]) -> int:
        """The reply's reasoning tokens, once it has ended."""
        return count_reasoning_tokens(token_ids, self._start, self.closed, *self._tag_ids)


@router.post("/v1/responses")
async def responses(request: Request) -> Response:
    ctx = get_context(request)
    body = await read_json(request, ResponsesRequest)
    chat = body.to_chat()
    run = _ToolMode(chat)
    structured = run.structured(chat)
    ctx.served.require(body.model)
    messages = [m.for_template() for m in chat.messages]

    def prepare(engine: AsyncEngine) -> Prepared:
        text, ids = chat_prompt(engine, chat, messages, run.tools)
        max_tokens = _fit(chat.requested_max_tokens, len(ids), engine.max_model_len)
        params = chat.sampling_params(max_tokens, None, 0, structured)
        keep_call_markup(params, run.mode, engine.tokenizer)
        return Prepared(ids, params, text)

    rid = new_item_id("resp")
    choices = await start_choices(ctx, request, rid, [prepare])
    tok = choices.engine.tokenizer
    run.mistral = mistral_calls(tok)
    constrained = structured is not None or chat.guided
    start = reply_start(
        ctx.config.reasoning_parser,
        tok.chat_template,
        constrained,
        chat.template_kwargs,
        choices.prepared[0].prompt,
    )
    think = _Think(start, tok) if start is not None else None
    model = body.model or ctx.served.name  # the name the client sent, as vLLM echoes it
    head = ResponseHead(rid, now_s(), model, body, choices.prepared[0].params)
    if not body.stream:
        return JSONResponse(await _whole(request, choices, head, run, think))
    stream = _stream(choices, head, run, think)
    return OwnedStreamingResponse(stream, choices.aclose, "text/event-stream")


async def _whole(
    request: Request, choices: Choices, head: ResponseHead, run: _ToolMode, think: _Think | None
) -> dict[str, Any]:
    try:
        outs = await choices.gens[0].collect(request)
    finally:
        await choices.aclose()
    out = merge(outs)
    usage = Usage(choices.prompt_tokens(), len(out.token_ids), outs[-1].num_cached_tokens)
    if out.finish_reason == "abort":
        return head.json("failed", [], usage, error=ABORTED)
    text = out.text
    if think is not None:
        _, text = think.feed(text, last=True)
        usage.reasoning_tokens = think.tokens(out.token_ids)
    reply = run.reply(text, out.finish_reason)
    reply.thought = think.thought() if think is not None else None
    return head.json(reply.status, reply.items(), usage)


async def _stream(
    choices: Choices, head: ResponseHead, run: _ToolMode, think: _Think | None
) -> AsyncIterator[str]:
    ev = Events(head)
    yield ev.lifecycle("response.created", "in_progress", [])
    yield ev.lifecycle("response.in_progress", "in_progress", [])
    gate = ToolCallGate() if run.mode == "auto" else None
    msg_id = new_item_id("msg")
    full = sent = ""  # the model's text after its reasoning; the text sent as deltas
    token_ids: list[int] = []
    usage = Usage(choices.prompt_tokens())
    last: CompletionOutput | None = None
    base = 0  # the message's output index: 1 after a reasoning item
    thinking = False  # a reasoning item is open
    try:
        async for _, out in choices.stream():
            delta = out.outputs[0]
            usage.output_tokens += len(delta.token_ids)
            usage.cached_tokens = out.num_cached_tokens
            token_ids += delta.token_ids
            text = delta.text
            if think is not None:  # the reasoning item opens, streams and closes first
                reasoning, text = think.feed(text, out.finished)
                if reasoning:
                    if not thinking:
                        thinking = True
                        for e in ev.open_reasoning(0, think.item_id):
                            yield e
                    yield ev.reasoning_delta(0, think.item_id, reasoning)
                if thinking and (think.closed or out.finished):
                    status = think.thought().status(delta.finish_reason == "length")
                    for e in ev.close_reasoning(0, think.item_id, think.text, status):
                        yield e
                    thinking, base = False, 1
            full += text
            if run.mode == "none":
                now = text
            elif gate is not None:  # "auto": what the gate lets through
                now = gate.feed(text)
            else:  # a forced call is held whole
                now = ""
            if now:
                if not sent:
                    for e in ev.open_message(base, msg_id):
                        yield e
                yield ev.text_delta(base, msg_id, now)
                sent += now
            if out.finished:
                last = delta
    except EmberError as err:  # headers are sent; report in the stream
        yield ev.error(err.status_code, err.message, err.param)
        return
    except Exception as err:
        log.exception("error while streaming %s", head.id)
        yield ev.error(500, f"internal error: {err}", None)
        return
    if last is None or last.finish_reason == "abort":
        yield ev.lifecycle("response.failed", "failed", [], usage, error=ABORTED)
        return
    reply = run.reply(full, last.finish_reason)
    if think is not None:
        reply.thought = think.thought()
        usage.reasoning_tokens = think.tokens(token_ids)
    # What the reply still owes as text, as the chat route decides it.
    if run.mode == "none":
        tail = ""
    elif reply.calls:
        tail = "" if gate is not None and gate.mode == "text" else reply.text or ""
    else:
        tail = gate.held() if gate is not None else reply.text or ""
    text = sent + tail
    reply.text = text if sent or tail or not reply.calls else None
    reply.message_id = msg_id
    index = base
    if reply.text is not None:
        if not sent:
            for e in ev.open_message(base, msg_id):
                yield e
        if tail:
            yield ev.text_delta(base, msg_id, tail)
        for e in ev.close_message(base, msg_id, text, reply.status):
            yield e
        index = base + 1
    for i, call in enumerate(reply.calls):
        for e in ev.function_call(index + i, call, reply.status):
            yield e
    kind = "response.incomplete" if reply.incomplete else "response.completed"
    yield ev.lifecycle(kind, reply.status, reply.items(), usage)


def _fit(requested: int | None, prompt_len: int, max_model_len: int) -> int:
    """fit_max_tokens, its errors naming this API's fields."""
    try:
        return fit_max_tokens(requested, prompt_len, max_model_len)
    except InvalidRequestError as e:
        if e.param != "max_tokens":
            raise InvalidRequestError(e.message, param="input") from None
        raise InvalidRequestError(
            f"max_output_tokens is too large: {requested}. This model's maximum context length "
            f"is {max_model_len} tokens and your request has {prompt_len} input tokens "
            f"({requested} > {max_model_len} - {prompt_len}).",
            param="max_output_tokens",
        ) from None
