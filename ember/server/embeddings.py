"""Embeddings: Ollama's /api/embed (batch) and legacy /api/embeddings, OpenAI's /v1/embeddings.

Embedding models (BERT family, e.g. all-minilm) are looked up by name in the model store and
loaded on first use next to the served generative model, which answers 400: ember does not
embed with generative models (see engine/embedder.py)."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from ember.engine.embedder import Embedder
from ember.errors import InvalidRequestError, ModelNotFoundError
from ember.server.context import get_context, read_json

router = APIRouter()


class OllamaEmbedRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    input: str | list[str] = ""
    prompt: str | None = None  # /api/embeddings
    truncate: bool = True
    dimensions: int | None = None
    keep_alive: str | float | None = None
    options: dict[str, Any] | None = None


class OpenAIEmbedRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: str = "float"
    dimensions: int | None = None
    truncate_prompt_tokens: int | None = None  # vLLM's extra: -1, or at least the model's limit


async def _embedder(request: Request, model: str | None) -> tuple[Embedder, str, float]:
    """The embedding model named `model`, loaded once; and the seconds spent loading it."""
    ctx = get_context(request)
    if not model:
        raise InvalidRequestError("model is required", param="model")
    if ctx.served.matches(model):
        raise InvalidRequestError(
            f"model '{model}' does not support embeddings: it is a generative model. Send the "
            "name of an embedding model (BERT family, e.g. all-minilm) from the model store",
            param="model",
        )
    if model.startswith(("/", ".", "~")) or "://" in model or "\\" in model:
        raise ModelNotFoundError(f"model '{model}' not found", param="model")
    state = request.app.state
    if not hasattr(state, "embedders"):
        state.embedders = {}
        state.embedders_lock = asyncio.Lock()
    t0 = time.monotonic()
    async with state.embedders_lock:
        local = await asyncio.to_thread(ctx.served.store().resolve, model)
        key = str(local.path)
        if key not in state.embedders:
            from ember.models.bert import is_bert_dir

            if not is_bert_dir(local.path):
                raise InvalidRequestError(
                    f"model '{model}' does not support embeddings: ember embeds with BERT-family "
                    "encoders (e.g. all-minilm)",
                    param="model",
                )
            state.embedders[key] = await asyncio.to_thread(
                Embedder, local.path, ctx.served.config.device
            )
    return state.embedders[key], local.name, time.monotonic() - t0


def _fit_dimensions(vectors: list[list[float]], dims: int | None, full: int) -> list[list[float]]:
    """Keep the first `dims` components and normalise again (Matryoshka truncation)."""
    if dims is None or dims == full:
        return vectors
    if not 1 <= dims <= full:
        raise InvalidRequestError(
            f"dimensions must be in [1, {full}], got {dims}", param="dimensions"
        )
    out = []
    for v in vectors:
        cut = v[:dims]
        norm = math.sqrt(sum(x * x for x in cut)) or 1.0
        out.append([x / norm for x in cut])
    return out


@router.post("/api/embed")
async def embed(request: Request) -> dict[str, Any]:
    t0 = time.monotonic()
    body = await read_json(request, OllamaEmbedRequest)
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    embedder, _, load_s = await _embedder(request, body.model)
    result = await asyncio.to_thread(embedder.embed, texts, body.truncate) if texts else None
    vectors = result.vectors if result else []
    return {
        "model": body.model,
        "embeddings": _fit_dimensions(vectors, body.dimensions, embedder.dimensions),
        "total_duration": round((time.monotonic() - t0) * 1e9),
        "load_duration": round(load_s * 1e9),
        "prompt_eval_count": result.prompt_tokens if result else 0,
    }


@router.post("/api/embeddings")
async def embeddings(request: Request) -> dict[str, Any]:
    body = await read_json(request, OllamaEmbedRequest)
    embedder, _, _ = await _embedder(request, body.model)
    if not body.prompt:
        return {"embedding": []}
    result = await asyncio.to_thread(embedder.embed, [body.prompt], True)
    return {"embedding": result.vectors[0]}


@router.post("/v1/embeddings")
async def openai_embeddings(request: Request) -> dict[str, Any]:
    body = await read_json(request, OpenAIEmbedRequest)
    embedder, name, _ = await _embedder(request, body.model)
    raw: list[Any] = (
        [body.input]
        if isinstance(body.input, str)
        or (body.input and all(isinstance(t, int) for t in body.input))
        else list(body.input)
    )
    if not raw:
        raise InvalidRequestError("input must not be empty", param="input")
    truncate = embedder.truncation(body.truncate_prompt_tokens)
    batch = [
        embedder.tokenize(item, truncate, "pass truncate_prompt_tokens: -1")
        if isinstance(item, str)
        else list(item)
        for item in raw
    ]
    for ids in batch:
        embedder.check_ids(ids)
    result = await asyncio.to_thread(embedder.embed_ids, batch)
    vectors = _fit_dimensions(result.vectors, body.dimensions, embedder.dimensions)
    if body.encoding_format not in ("float", "base64"):
        raise InvalidRequestError(
            "encoding_format must be 'float' or 'base64'", param="encoding_format"
        )
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    return {"object": "list", "data": data, "model": body.model or name, "usage": usage}


def _encode(vector: list[float], fmt: str) -> list[float] | str:
    if fmt == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
