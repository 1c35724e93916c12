"""Ollama's API: /, /api/version, /api/show; /api/generate and /api/chat come from
ollama_generate.py, /api/tags, /api/ps and the store routes from store_routes.py. Errors are `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from ember import __version__
from ember.errors import InvalidRequestError
from ember.models.config import served_context_length
from ember.registry.modelfile import write_modelfile
from ember.server.context import get_context, read_json
from ember.server.embeddings import router as embeddings_router
from ember.server.ollama_generate import router as generate_router
from ember.server.protocol_ollama import ShowRequest, rfc3339
from ember.server.show import capabilities, model_info
from ember.tokenizer import Tokenizer

if TYPE_CHECKING:
    from ember.registry import LocalModel, ModelStore

log = logging.getLogger("ember.server")
router = APIRouter()


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


@router.post("/api/show")
async def show(request: Request) -> dict[str, Any]:
    """A model's Modelfile, parameters, template, details and model_info. A model that is not
    loaded is described from the store, as Ollama does, without loading it. model_info's
    context_length is the longest the model serves (config.json's, scaled by YaRN or linear rope
    scaling as vLLM derives it); /api/ps shows the one this server runs it with."""
    ctx = get_context(request)
    body = await read_json(request, ShowRequest)
    model = body.model or body.name
    if not model:
        raise InvalidRequestError("model is required", param="model")
    key = ctx.served.require(model)
    residency = ctx.residency
    if key not in residency.residents and key not in residency.preloaded:
        return await asyncio.to_thread(_describe_stored, residency.store, key)
    engine, _ = await ctx.wait_ready(request)
    served = ctx.served
    assert served.local_model is not None
    return _show_body(
        served.local_model,
        served.default_options,
        served.default_system,
        engine.tokenizer,
        served_context_length(served.local_model.path) or engine.max_model_len,
    )


def _describe_stored(store: ModelStore, key: str) -> dict[str, Any]:
    local = store.resolve(key)
    path = Path(local.path)
    return _show_body(
        local,
        dict(store.params(local)),
        store.system(local),
        Tokenizer.from_dir(path),
        served_context_length(path),
    )


def _show_body(
    local: LocalModel,
    params: dict[str, Any],
    system: str | None,
    tokenizer: Tokenizer,
    context_length: int,
) -> dict[str, Any]:
    entry = _model_entry(local)
    parameters = "\n".join(f"{k:<30} {json.dumps(v)}" for k, v in params.items())
    family = entry["details"].get("family", "")
    # `verbose` is accepted and ignored: model_info has no tokenizer arrays to add.
    modelfile = write_modelfile(str(local.path), tokenizer.chat_template, system, params)
    out: dict[str, Any] = {
        "modelfile": modelfile,
        "parameters": parameters,
        "template": tokenizer.chat_template or "",
        "details": entry["details"],
        "model_info": model_info(Path(local.path), family, context_length),
        "capabilities": capabilities(tokenizer),
        "modified_at": entry["modified_at"],
    }
    if system:
        out["system"] = system
    return out


router.include_router(generate_router)
router.include_router(embeddings_router)  # also serves /v1/embeddings
