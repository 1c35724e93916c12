"""Ollama's API: /, /api/version, /api/show; /api/generate and /api/chat come from
ollama_generate.py, /api/tags, /api/ps and the store routes from store_routes.py. Errors are `{"error": "..."}`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from ember import __version__
from ember.errors import InvalidRequestError
from ember.server.context import get_context, read_json
from ember.server.embeddings import router as embeddings_router
from ember.server.ollama_generate import router as generate_router
from ember.server.protocol_ollama import ShowRequest, rfc3339
from ember.server.show import capabilities, model_info

if TYPE_CHECKING:
    from ember.registry import LocalModel

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
        "model_info": model_info(Path(served.local_model.path), family, engine.max_model_len),
        "capabilities": capabilities(engine.tokenizer),
        "modified_at": entry["modified_at"],
    }
    if served.default_system:
        out["system"] = served.default_system
    return out


router.include_router(generate_router)
router.include_router(embeddings_router)  # also serves /v1/embeddings
