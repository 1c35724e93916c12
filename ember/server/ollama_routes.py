"""Ollama's API: /, /api/version, /api/tags, /api/ps, /api/generate, /api/chat.

Streams NDJSON by default; `"stream": false` gives one object. Errors are `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ember import __version__
from ember.errors import EmberError, InvalidRequestError
from ember.outputs import RequestOutput
from ember.server.context import Prepared, get_context, read_json
from ember.server.protocol_ollama import (
    ChatRequest,
    GenerateRequest,
    ShowRequest,
    created_at,
    done_fields,
    merge_options,
    rfc3339,
    sampling_params,
)
from ember.server.streaming import NDJSON, Generation, OwnedStreamingResponse, ndjson_line

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine
    from ember.registry import LocalModel

log = logging.getLogger("ember.server")
router = APIRouter()

# Ollama reports keep_alive "forever" this way; ember keeps its one model loaded.
_FOREVER = "2318-11-30T00:00:00Z"


@router.api_route("/", methods=["GET", "HEAD"], response_class=PlainTextResponse)
async def root() -> str:
    return "Ollama is running"


@router.api_route("/api/version", methods=["GET", "HEAD"])
async def version() -> dict[str, str]:
    return {"version": __version__}


def _model_entry(m: LocalModel) -> dict[str, Any]:
    raw = m.details
    details: dict[str, Any] = (
        dataclasses.asdict(raw) if dataclasses.is_dataclass(raw) and not isinstance(raw, type)
        else dict(raw or {})
    )  # fmt: skip
    family = details.get("family", "")
    details.setdefault("parent_model", "")
    details.setdefault("families", [family] if family else None)
    return {
        "name": m.name,
        "model": m.name,
        "modified_at": rfc3339(m.modified_at),
        "size": m.size,
        "digest": m.digest,
        "details": details,
    }


@router.api_route("/api/tags", methods=["GET", "HEAD"])
async def tags(request: Request) -> dict[str, Any]:
    ctx = get_context(request)
    models = await asyncio.to_thread(ctx.served.store().list)
    entries = [_model_entry(m) for m in models]
    local = ctx.served.local_model
    if local is not None and all(e["name"] != local.name for e in entries):
        entries.append(_model_entry(local))  # served from a directory outside the store
    return {"models": entries}


@router.get("/api/ps")
async def ps(request: Request) -> dict[str, Any]:
    served = get_context(request).served
    local, engine = served.local_model, served.engine
    if local is None or engine is None or served.status != "ok":
        return {"models": []}
    entry = _model_entry(local)
    del entry["modified_at"]
    name = served.name
    on_gpu = _on_gpu(served.config.device)
    entry.update(
        name=name,
        model=name,
        expires_at=_FOREVER,
        size_vram=local.size if on_gpu else 0,
        context_length=engine.max_model_len,
    )
    return {"models": [entry]}


@router.post("/api/show")
async def show(request: Request) -> dict[str, Any]:
    ctx = get_context(request)
    body = await read_json(request, ShowRequest)
    model = body.model or body.name
    if not model:
        raise InvalidRequestError("model is required", param="model")
    ctx.served.require(model)
    engine, _ = await ctx.wait_ready(request)
    served = ctx.served
    assert served.local_model is not None
    entry = _model_entry(served.local_model)
    params = served.default_options
    parameters = "\n".join(f"{k:<30} {json.dumps(v)}" for k, v in params.items())
    template = engine.tokenizer.chat_template or ""
    family = entry["details"].get("family", "")
    modelfile = f"FROM {served.local_model.path}\n" + "".join(
        f"PARAMETER {k} {json.dumps(v)}\n" for k, v in params.items()
    )
    out: dict[str, Any] = {
        "modelfile": modelfile,
        "parameters": parameters,
        "template": template,
        "details": entry["details"],
        "model_info": {
            "general.architecture": family,
            f"{family}.context_length": engine.max_model_len,
        },
        "capabilities": ["completion", "tools"] if "tools" in template else ["completion"],
        "modified_at": entry["modified_at"],
    }
    if served.default_system:
        out["system"] = served.default_system
    return out


def _on_gpu(device: str) -> bool:
    if device == "auto":
        import torch  # already imported by the loaded engine

        return bool(torch.cuda.is_available())
    return device.startswith("cuda")


def _load_response(model: str, chat: bool) -> JSONResponse:
    """What Ollama answers to an empty prompt / empty messages: the model is now loaded."""
    body: dict[str, Any] = {"model": model, "created_at": created_at()}
    if chat:
        body["message"] = {"role": "assistant", "content": ""}
    else:
        body["response"] = ""
    body.update(done=True, done_reason="load")
    return JSONResponse(body)


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    ctx = get_context(request)
    body = await read_json(request, GenerateRequest)
    body.check()
    ctx.served.require(body.model)
    t0 = time.monotonic()
    if not body.prompt and not body.system and not body.context:
        await ctx.wait_ready(request)
        return _load_response(body.model, chat=False)

    def prepare(engine: AsyncEngine) -> Prepared:
        tok = engine.tokenizer
        system = body.system if body.system is not None else ctx.served.default_system
        context = list(body.context or [])
        if body.raw or tok.chat_template is None:
            # Ollama's default template for models without one: system, then prompt.
            text = body.prompt if body.raw or not system else f"{system}\n\n{body.prompt}"
            ids = tok.encode(text, add_special_tokens=not context)
        else:
            messages = [{"role": "system", "content": system}] if system else []
            messages.append({"role": "user", "content": body.prompt})
            text = tok.apply_chat_template(messages, add_generation_prompt=True)
            ids = tok.encode(text, add_special_tokens=False)
        ids = context + ids
        opts = merge_options(ctx.served.default_options, body.options)
        return Prepared(ids, sampling_params(opts, len(ids), engine.max_model_len), text)

    def chunk(text: str) -> dict[str, Any]:
        return {"model": body.model, "created_at": created_at(), "response": text, "done": False}

    def final(out: RequestOutput, gen_ids: list[int], text: str) -> dict[str, Any]:
        last = chunk(text)
        last.update(done_fields(out, len(gen_ids), t0, load_wait))
        if not body.raw:  # Ollama returns no context in raw mode
            last["context"] = prepared.prompt_token_ids + gen_ids
        return last

    gen, prepared, load_wait = await ctx.start_generation(request, _request_id("gen"), prepare)
    return await _respond(request, gen, body.streaming, chunk, final)


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    ctx = get_context(request)
    body = await read_json(request, ChatRequest)
    body.check()
    ctx.served.require(body.model)
    t0 = time.monotonic()
    if not body.messages:
        await ctx.wait_ready(request)
        return _load_response(body.model, chat=True)
    messages = [m.for_template() for m in body.messages]

    def prepare(engine: AsyncEngine) -> Prepared:
        tok = engine.tokenizer
        system = ctx.served.default_system  # the model's SYSTEM unless the client sent one
        if system and all(m["role"] != "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system})
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tools=body.tools)
        ids = tok.encode(text, add_special_tokens=False)
        opts = merge_options(ctx.served.default_options, body.options)
        return Prepared(ids, sampling_params(opts, len(ids), engine.max_model_len), text)

    def chunk(text: str) -> dict[str, Any]:
        return {
            "model": body.model,
            "created_at": created_at(),
            "message": {"role": "assistant", "content": text},
            "done": False,
        }

    def final(out: RequestOutput, gen_ids: list[int], text: str) -> dict[str, Any]:
        last = chunk(text)
        last.update(done_fields(out, len(gen_ids), t0, load_wait))
        return last

    gen, _, load_wait = await ctx.start_generation(request, _request_id("chat"), prepare)
    return await _respond(request, gen, body.streaming, chunk, final)


Chunk = Callable[[str], dict[str, Any]]
Final = Callable[[RequestOutput, list[int], str], dict[str, Any]]


async def _respond(
    request: Request, gen: Generation, streaming: bool, chunk: Chunk, final: Final
) -> Response:
    if not streaming:
        try:
            outs = await gen.collect(request)
        finally:
            await gen.aclose()
        gen_ids = [t for o in outs for t in o.outputs[0].token_ids]
        return JSONResponse(final(outs[-1], gen_ids, "".join(o.outputs[0].text for o in outs)))
    return OwnedStreamingResponse(_ndjson(gen, chunk, final), gen.aclose, NDJSON)


async def _ndjson(gen: Generation, chunk: Chunk, final: Final) -> AsyncIterator[str]:
    gen_ids: list[int] = []
    try:
        async for out in gen:
            delta = out.outputs[0]
            gen_ids.extend(delta.token_ids)
            if delta.text:
                yield ndjson_line(chunk(delta.text))
            if out.finished:
                yield ndjson_line(final(out, gen_ids, ""))
    except EmberError as e:  # the status line is gone; Ollama reports errors in the stream
        yield ndjson_line({"error": e.message})
    except Exception as e:
        log.exception("error while streaming %s", gen.request_id)
        yield ndjson_line({"error": f"internal error: {e}"})


def _request_id(kind: str) -> str:
    return f"ollama-{kind}-{uuid.uuid4().hex}"
