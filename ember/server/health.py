"""Probes and scrapes: /live (the process runs), /health (the model is loaded and warmed; 503
with load progress until then; /ping, vLLM's and SageMaker's name for it, answers the same),
/metrics (Prometheus), /version (vLLM's)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ember import __version__
from ember.server.context import get_context

router = APIRouter()


@router.api_route("/live", methods=["GET", "HEAD"])
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.api_route("/health", methods=["GET", "HEAD"])
@router.api_route("/ping", methods=["GET", "HEAD", "POST"])
async def health(request: Request) -> JSONResponse:
    status, body = get_context(request).served.health()
    drain = getattr(request.app.state, "drain", None)
    if drain is not None and drain.draining:  # tell load balancers to stop sending
        status, body = 503, {**body, "status": "draining"}
    return JSONResponse(body, status_code=status)


@router.api_route("/metrics", methods=["GET", "HEAD"])
async def metrics(request: Request) -> Response:
    ctx = get_context(request)
    ctx.metrics.set_startup(ctx.served.startup_phases())
    ctx.metrics.set_weights(*ctx.served.weights_progress())
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.api_route("/version", methods=["GET", "HEAD"])
async def version() -> dict[str, Any]:
    return {"version": __version__}
