"""The OpenAI API as vLLM serves it: /v1/models, /v1/completions, /v1/chat/completions.

Streams are SSE (`data: {...}` events ending with `data: [DONE]`); errors are
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ember.errors import EmberError, InvalidRequestError
from ember.outputs import CompletionOutput, RequestOutput
from ember.server.context import Prepared, get_context, read_json
from ember.server.errors import error_response
from ember.server.protocol_openai import (
    ChatCompletionRequest,
    CompletionRequest,
    chat_logprobs,
    completion_logprobs,
    fit_max_tokens,
    new_id,
    now_s,
    usage,
)
from ember.server.streaming import SSE_DONE, Generation, OwnedStreamingResponse, sse_event

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine

log = logging.getLogger("ember.server")
router = APIRouter()


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    served = get_context(request).served
    engine = served.engine
    local = served.local_model
    card = {
        "id": served.name,
        "object": "model",
        "created": now_s(),
        "owned_by": "ember",
        "root": str(local.path) if local is not None else served.config.model,
        "parent": None,
        "max_model_len": engine.max_model_len if engine else served.config.context_length,
        "permission": [],
    }
    return {"object": "list", "data": [card]}


def _prompt_ids(engine: AsyncEngine, prompt: str | list[Any]) -> tuple[list[int], str | None]:
    """One prompt: a string or a list of token ids (a one-element batch of either is accepted)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        return engine.tokenizer.encode(prompt, add_special_tokens=True), prompt
    if all(isinstance(t, int) for t in prompt):
        if not prompt:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        return list(prompt), None
    raise InvalidRequestError(
        "batched prompts are not supported; send one prompt per request", param="prompt"
    )


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    ctx = get_context(request)
    body = await read_json(request, CompletionRequest)
    body.check()
    ctx.served.require(body.model)

    def prepare(engine: AsyncEngine) -> Prepared:
        ids, text = _prompt_ids(engine, body.prompt)
        max_tokens = fit_max_tokens(body.max_tokens, len(ids), engine.max_model_len)
        return Prepared(ids, body.sampling_params(max_tokens, body.logprobs), text)

    rid = new_id("cmpl")
    gen, prepared, _ = await ctx.start_generation(request, rid, prepare)
    decode = _decoder(gen)
    base = {"id": rid, "object": "text_completion", "created": now_s(), "model": ctx.served.name}
    offset = 0

    def choice(delta: CompletionOutput, finished: bool) -> dict[str, Any]:
        nonlocal offset
        lps = completion_logprobs(delta, decode, offset)
        offset += len(delta.text)
        return {
            "index": 0,
            "text": delta.text,
            "logprobs": lps,
            "finish_reason": delta.finish_reason if finished else None,
            "stop_reason": delta.stop_reason if finished else None,
        }

    if not body.stream:
        outs = await _collect(request, gen)
        merged = _merge(outs)
        return JSONResponse(
            {
                **base,
                "choices": [choice(merged, True)],
                "usage": usage(len(prepared.prompt_token_ids), len(merged.token_ids)),
            }
        )

    def events(out: RequestOutput) -> list[dict[str, Any]]:
        delta = out.outputs[0]
        if not delta.text and not out.finished:
            return []
        return [{**base, "choices": [choice(delta, out.finished)]}]

    return _sse(gen, base, len(prepared.prompt_token_ids), body.include_usage, events)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    ctx = get_context(request)
    body = await read_json(request, ChatCompletionRequest)
    body.check()
    ctx.served.require(body.model)
    messages = [m.for_template() for m in body.messages]

    def prepare(engine: AsyncEngine) -> Prepared:
        tok = engine.tokenizer
        text = tok.apply_chat_template(
            messages,
            add_generation_prompt=body.add_generation_prompt,
            tools=body.tools,
            **(body.chat_template_kwargs or {}),
        )
        ids = tok.encode(text, add_special_tokens=False)
        max_tokens = fit_max_tokens(body.requested_max_tokens, len(ids), engine.max_model_len)
        return Prepared(ids, body.sampling_params(max_tokens, body.num_logprobs), text)

    rid = new_id("chatcmpl")
    gen, prepared, _ = await ctx.start_generation(request, rid, prepare)
    decode = _decoder(gen)
    created = now_s()
    model = ctx.served.name

    if not body.stream:
        outs = await _collect(request, gen)
        merged = _merge(outs)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": merged.text, "tool_calls": []},
            "logprobs": chat_logprobs(merged, decode),
            "finish_reason": merged.finish_reason,
            "stop_reason": merged.stop_reason,
        }
        return JSONResponse(
            {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": usage(len(prepared.prompt_token_ids), len(merged.token_ids)),
            }
        )

    base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
    first = True

    def events(out: RequestOutput) -> list[dict[str, Any]]:
        nonlocal first
        delta = out.outputs[0]
        chunks = []
        if first:  # vLLM opens every chat stream with the role
            first = False
            chunks.append(_chat_chunk(base, {"role": "assistant", "content": ""}, None, None))
        if delta.text or out.finished:
            chunks.append(
                _chat_chunk(
                    base,
                    {"content": delta.text} if delta.text else {},
                    chat_logprobs(delta, decode),
                    delta if out.finished else None,
                )
            )
        return chunks

    return _sse(gen, base, len(prepared.prompt_token_ids), body.include_usage, events)


def _chat_chunk(
    base: dict[str, Any],
    delta: dict[str, Any],
    logprobs: dict[str, Any] | None,
    finished: CompletionOutput | None,
) -> dict[str, Any]:
    choice = {
        "index": 0,
        "delta": delta,
        "logprobs": logprobs,
        "finish_reason": finished.finish_reason if finished else None,
    }
    if finished is not None:
        choice["stop_reason"] = finished.stop_reason
    return {**base, "choices": [choice]}


def _decoder(gen: Generation) -> Callable[[int], str]:
    tok = gen.engine.tokenizer
    return lambda token_id: tok.decode([token_id])


async def _collect(request: Request, gen: Generation) -> list[RequestOutput]:
    try:
        return await gen.collect(request)
    finally:
        await gen.aclose()


def _merge(outs: list[RequestOutput]) -> CompletionOutput:
    """Join the deltas of one request into one CompletionOutput."""
    last = outs[-1].outputs[0]
    logprobs = None
    if any(o.outputs[0].logprobs is not None for o in outs):
        logprobs = [lp for o in outs for lp in (o.outputs[0].logprobs or [])]
    return CompletionOutput(
        index=0,
        text="".join(o.outputs[0].text for o in outs),
        token_ids=[t for o in outs for t in o.outputs[0].token_ids],
        finish_reason=last.finish_reason,
        stop_reason=last.stop_reason,
        logprobs=logprobs,
    )


def _sse(
    gen: Generation,
    base: dict[str, Any],
    prompt_tokens: int,
    include_usage: bool,
    events: Callable[[RequestOutput], list[dict[str, Any]]],
) -> Response:
    async def body() -> AsyncIterator[str]:
        completion_tokens = 0
        try:
            async for out in gen:
                completion_tokens += len(out.outputs[0].token_ids)
                for event in events(out):
                    yield sse_event(event)
            if include_usage:
                yield sse_event(
                    {**base, "choices": [], "usage": usage(prompt_tokens, completion_tokens)}
                )
        except EmberError as e:  # headers are sent; report in the stream as vLLM does
            yield _sse_error(e.status_code, e.message, e.param)
        except Exception as e:
            log.exception("error while streaming %s", gen.request_id)
            yield _sse_error(500, f"internal error: {e}", None)
        yield SSE_DONE

    return OwnedStreamingResponse(body(), gen.aclose, "text/event-stream")


def _sse_error(status: int, message: str, param: str | None) -> str:
    err = error_response("/v1/", status, message, param)
    return f"data: {bytes(err.body).decode()}\n\n"
