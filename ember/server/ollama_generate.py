"""Ollama's /api/generate and /api/chat.

Streams NDJSON by default; `"stream": false` gives one object. Errors are `{"error": "..."}`,
also mid-stream, as a last NDJSON line. With `tools`, a reply that opens like a tool call is held
back until the model has finished, then parsed and sent as `tool_calls` in one chunk; text streams,
and a call tag after it holds back the rest the same way (ToolCallGate)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ember.errors import EmberError, InvalidRequestError
from ember.outputs import CompletionOutput, RequestOutput
from ember.server.context import Prepared, get_context, read_json
from ember.server.ollama_output import ollama_logprobs, tool_call_message
from ember.server.ollama_prompt import (
    fim_prompt,
    fit_messages,
    fit_tokens,
    prompt_limit,
    render_go_template,
)
from ember.server.protocol_ollama import (
    ChatRequest,
    GenerateRequest,
    context_length,
    created_at,
    done_fields,
    merge_options,
    sampling_params,
    with_call_ids,
)
from ember.server.streaming import NDJSON, Generation, OwnedStreamingResponse, ndjson_line
from ember.tokenizer.reasoning import (
    Start,
    ThinkSplitter,
    prompt_start,
    split_piece,
    supports_thinking,
)
from ember.tokenizer.tool_calls import ToolCallGate, mistral_calls, tool_names

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine

log = logging.getLogger("ember.server")
router = APIRouter()


@dataclass(slots=True)
class _Shape:
    """How generated text becomes response chunks for one request."""

    key: str  # "response" (generate) or "message" (chat)
    decode: Callable[[int], str]
    thinking: ThinkSplitter | None = None
    tools: bool = False  # parse tool calls from the whole text at the end
    tool_names: frozenset[str] = frozenset()  # the functions the request offered
    top_logprobs: int = 0  # alternatives per token in `logprobs` entries

    def fields(self, text: str, thinking: str = "") -> dict[str, Any]:
        if self.key == "response":
            out: dict[str, Any] = {"response": text}
            if thinking:
                out["thinking"] = thinking
            return out
        msg: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            msg["thinking"] = thinking
        return {"message": msg}


def _load_response(model: str, chat: bool, reason: str = "load") -> JSONResponse:
    """What Ollama answers to an empty prompt / empty messages: the model is now loaded."""
    body: dict[str, Any] = {"model": model, "created_at": created_at()}
    if chat:
        body["message"] = {"role": "assistant", "content": ""}
    else:
        body["response"] = ""
    body.update(done=True, done_reason=reason)
    return JSONResponse(body)


def _thinking(think: bool | str | None, template: str | None, model: str) -> bool:
    """Whether to split thinking from content; 400 if asked of a model that cannot think."""
    if think in (None, False, ""):
        return False
    if not supports_thinking(template):
        raise InvalidRequestError(f'"{model}" does not support thinking', param="think")
    return True


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    ctx = get_context(request)
    body = await read_json(request, GenerateRequest)
    body.check()
    structured = body.structured
    ctx.served.require(body.model)
    t0 = time.monotonic()
    if not body.prompt:  # as in Ollama, whatever system, context or suffix say
        reason = await ctx.load_or_unload(request)  # store owner's hook: keep_alive 0 unloads
        return _load_response(body.model, chat=False, reason=reason)
    think = False

    def prepare(engine: AsyncEngine) -> Prepared:
        nonlocal think
        tok = engine.tokenizer
        system = body.system or ctx.served.default_system  # "": the model's, as in Ollama
        context = list(body.context or [])
        think = _thinking(body.think, None if body.raw else tok.chat_template, body.model)
        if body.suffix:
            text = fim_prompt(tok, body.prompt, body.suffix, body.model)
            ids = tok.encode(text, add_special_tokens=not context)
        elif body.template and not body.raw:
            values = {"System": system or "", "Prompt": body.prompt, "Suffix": body.suffix}
            text = render_go_template(body.template, values)
            ids = tok.encode(text, add_special_tokens=not context)
        elif body.raw or tok.chat_template is None:
            # Ollama's default template for models without one: system, then prompt.
            text = body.prompt if body.raw or not system else f"{system}\n\n{body.prompt}"
            ids = tok.encode(text, add_special_tokens=not context)
        else:
            messages = [{"role": "system", "content": system}] if system else []
            messages.append({"role": "user", "content": body.prompt})
            kwargs: dict[str, Any] = {"enable_thinking": think} if body.think is not None else {}
            text = tok.apply_chat_template(messages, add_generation_prompt=True, **kwargs)
            ids = tok.encode(text, add_special_tokens=False)
        if context and tok.bos_token_id is not None and ids[:1] == [tok.bos_token_id]:
            ids = ids[1:]  # the template's BOS: the context already starts with one
        ids = context + ids
        opts = merge_options(ctx.served.default_options, body.options)
        if body.truncate is not False:
            ctx_len = context_length(opts, engine.max_model_len)
            limit = prompt_limit(len(ids), ctx_len, opts.num_predict)
            ids = fit_tokens(ids, limit, tok.bos_token_id)
        params = sampling_params(
            opts, len(ids), engine.max_model_len, structured=structured, logprobs=body.num_logprobs
        )
        return Prepared(ids, params, text)

    gen, prepared, load_wait = await ctx.start_generation(request, _request_id("gen"), prepare)
    shape = _shape("response", gen, prepared, think, tools=False)

    def extra(out: RequestOutput, gen_ids: list[int]) -> dict[str, Any]:
        fields = done_fields(out, len(gen_ids), t0, load_wait)
        if not body.raw:  # Ollama returns no context in raw mode
            fields["context"] = prepared.prompt_token_ids + gen_ids
        return fields

    return await _respond(request, gen, body.model, body.streaming, shape, extra)


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    ctx = get_context(request)
    body = await read_json(request, ChatRequest)
    body.check()
    structured = body.structured
    ctx.served.require(body.model)
    t0 = time.monotonic()
    if not body.messages:
        reason = await ctx.load_or_unload(request)
        return _load_response(body.model, chat=True, reason=reason)
    messages = [m.for_template() for m in body.messages]
    think = False

    def prepare(engine: AsyncEngine) -> Prepared:
        nonlocal think
        tok = engine.tokenizer
        system = ctx.served.default_system  # the model's SYSTEM unless the client sent one
        if system and all(m["role"] != "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system})
        think = _thinking(body.think, tok.chat_template, body.model)
        kwargs: dict[str, Any] = {"enable_thinking": think} if body.think is not None else {}
        mistral = mistral_calls(tok)
        if mistral:
            with_call_ids(messages)

        def render(msgs: list[dict[str, Any]]) -> tuple[str, list[int]]:
            text = tok.apply_chat_template(
                msgs, add_generation_prompt=True, tools=body.tools or None, **kwargs
            )
            return text, tok.encode(text, add_special_tokens=False)

        opts = merge_options(ctx.served.default_options, body.options)
        if body.truncate is False:
            text, ids = render(messages)
        else:
            ctx_len = context_length(opts, engine.max_model_len)

            def limit(n: int) -> int:
                return prompt_limit(n, ctx_len, opts.num_predict)

            text, ids = fit_messages(messages, render, limit, tok.bos_token_id)
        params = sampling_params(
            opts, len(ids), engine.max_model_len, structured=structured, logprobs=body.num_logprobs
        )
        if mistral and body.tools and structured is None:
            params.skip_special_tokens = False  # keep [TOOL_CALLS] in the text, as Ollama
        return Prepared(ids, params, text)

    gen, prepared, load_wait = await ctx.start_generation(request, _request_id("chat"), prepare)
    tools = bool(body.tools) and structured is None
    shape = _shape("message", gen, prepared, think, tools, tool_names(body.tools))

    def extra(out: RequestOutput, gen_ids: list[int]) -> dict[str, Any]:
        return done_fields(out, len(gen_ids), t0, load_wait)

    return await _respond(request, gen, body.model, body.streaming, shape, extra)


def _shape(
    key: str,
    gen: Generation,
    prepared: Prepared,
    think: bool,
    tools: bool,
    names: frozenset[str] = frozenset(),
) -> _Shape:
    tok = gen.engine.tokenizer
    splitter = None
    if think:  # as Ollama: whitespace around the thinking and before the content is dropped
        splitter = ThinkSplitter(prompt_start(prepared.prompt, Start.OPEN_TAG), trim=True)
    top_logprobs = prepared.params.logprobs or 0
    return _Shape(key, lambda t: tok.decode([t]), splitter, tools, names, top_logprobs)


Extra = Callable[[RequestOutput, list[int]], dict[str, Any]]


async def _respond(
    request: Request, gen: Generation, model: str, streaming: bool, shape: _Shape, extra: Extra
) -> Response:
    if not streaming:
        try:
            outs = await gen.collect(request)
        finally:
            await gen.aclose()
        lines = [line async for line in _chunks(_aiter(outs), model, shape, extra, whole=True)]
        return JSONResponse(lines[-1])
    stream = (ndjson_line(c) async for c in _chunks(gen, model, shape, extra, whole=False))
    return OwnedStreamingResponse(_guarded(stream, gen), gen.aclose, NDJSON)


async def _aiter(outs: list[RequestOutput]) -> AsyncIterator[RequestOutput]:
    for out in outs:
        yield out


async def _chunks(
    outs: AsyncIterator[RequestOutput] | Generation,
    model: str,
    shape: _Shape,
    extra: Extra,
    whole: bool,
) -> AsyncIterator[dict[str, Any]]:
    """The response chunks; with whole=True only the last one matters and holds everything.
    Streaming with tools, a reply that opens like a tool call is held back and parsed at the end;
    other text streams, and tool calls found after it come in the final chunk."""
    gen_ids: list[int] = []
    full_text, held_text, held_thinking = "", "", ""
    held_logprobs: list[dict[str, Any]] = []
    saw_logprobs = False
    gate = ToolCallGate() if shape.tools and not whole else None
    async for out in outs:
        delta: CompletionOutput = out.outputs[0]
        gen_ids.extend(delta.token_ids)
        thinking, text = split_piece(shape.thinking, delta.text, out.finished)
        full_text += text
        if gate is not None:
            text = gate.feed(text)
        logprobs = ollama_logprobs(delta, shape.decode, shape.top_logprobs)
        saw_logprobs = saw_logprobs or logprobs is not None
        if whole:
            held_text += text
            held_thinking += thinking
            held_logprobs += logprobs or []
        elif text or thinking or logprobs:
            chunk = _chunk(model, shape, text, thinking)
            if logprobs is not None:
                chunk["logprobs"] = logprobs
            yield chunk
        if out.finished:
            if gate is not None:
                held_text = gate.held()
            last = _chunk(model, shape, held_text, held_thinking)
            if shape.tools:
                content, calls = tool_call_message(full_text, shape.tool_names)
                if calls:
                    streamed = gate is not None and gate.mode == "text"
                    last["message"]["content"] = "" if streamed else content
                    last["message"]["tool_calls"] = calls
            if whole and saw_logprobs:
                last["logprobs"] = held_logprobs
            last.update(extra(out, gen_ids))
            yield last


def _chunk(model: str, shape: _Shape, text: str, thinking: str) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": created_at(),
        **shape.fields(text, thinking),
        "done": False,
    }


async def _guarded(lines: AsyncIterator[str], gen: Generation) -> AsyncIterator[str]:
    try:
        async for line in lines:
            yield line
    except EmberError as e:  # the status line is gone; Ollama reports errors in the stream
        yield ndjson_line({"error": e.message})
    except Exception as e:
        log.exception("error while streaming %s", gen.request_id)
        yield ndjson_line({"error": f"internal error: {e}"})


def _request_id(kind: str) -> str:
    return f"ollama-{kind}-{uuid.uuid4().hex}"
