"""Ollama's model-store routes: /api/tags, /api/ps, /api/pull, /api/push, /api/copy,
/api/delete, /api/create and /api/blobs/:digest.

Pull and create stream NDJSON progress (`{"status", "digest", "total", "completed"}`) unless
`"stream": false`; their errors after the first line arrive as an `{"error"}` line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ember.errors import EmberError, InvalidRequestError, ModelNotFoundError
from ember.server.context import ServerContext, get_context, read_json
from ember.server.limits import without_stalls
from ember.server.model_refs import check_model_ref
from ember.server.streaming import NDJSON, ndjson_line

if TYPE_CHECKING:
    from ember.registry import LocalModel
    from ember.registry.create import CreateSpec

log = logging.getLogger("ember.server")
router = APIRouter()

# How Ollama writes "never": a keep-alive that does not run out.
FOREVER_AT = "2318-11-30T00:00:00Z"


class NotImplementedByEmber(EmberError):
    status_code = 501


class _Named(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    name: str = ""  # Ollama's older spelling of `model`
    stream: bool | None = None

    def target(self) -> str:
        text = self.model or self.name
        if not text:
            raise InvalidRequestError("model is required", param="model")
        return text


class PullRequest(_Named):
    source: str | None = None  # ember: where to pull `model` from (s3://, gs://, hf://, ...)
    insecure: bool = False


class CopyRequest(BaseModel):
    source: str
    destination: str


class CreateRequest(_Named):
    from_: str | None = Field(default=None, alias="from")
    files: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    quantize: str | None = None
    adapters: dict[str, str] | None = None
    modelfile: str | None = None


def _time(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def model_entry(m: LocalModel) -> dict[str, Any]:
    """A model as /api/tags lists it."""
    details = dataclasses.asdict(m.details)
    details["families"] = list(details["families"]) or None
    return {
        "name": m.name,
        "model": m.name,
        "modified_at": _time(m.modified_at),
        "size": m.size,
        "digest": m.digest,
        "details": details,
    }


@router.api_route("/api/tags", methods=["GET", "HEAD"])
async def tags(request: Request) -> dict[str, Any]:
    ctx = get_context(request)
    models = await asyncio.to_thread(ctx.residency.store.list)
    entries = [model_entry(m) for m in models]
    names = {e["name"] for e in entries}
    for r in ctx.residency.loaded():  # served from a folder or URI outside the store
        local = r.served.local_model
        if local is not None and local.name not in names:
            entries.append(model_entry(local))
            names.add(local.name)
    return {"models": entries}


@router.get("/api/ps")
async def ps(request: Request) -> dict[str, Any]:
    ctx = get_context(request)
    on_gpu = _on_gpu(ctx.config.device)
    out = []
    for r in ctx.residency.loaded():
        local, engine = r.served.local_model, r.served.engine
        if local is None or engine is None:
            continue
        entry = model_entry(local)
        del entry["modified_at"]
        expires = r.expires_wall()
        entry.update(
            name=r.served.name,
            model=r.served.name,
            expires_at=FOREVER_AT
            if expires == float("inf")
            else _time(datetime.fromtimestamp(expires, tz=timezone.utc)),
            size_vram=local.size if on_gpu else 0,
            context_length=engine.max_model_len,
        )
        out.append(entry)
    return {"models": out}


def _on_gpu(device: str) -> bool:
    if device == "auto":
        import torch  # already imported by the loaded engines

        return bool(torch.cuda.is_available())
    return device.startswith("cuda")


@router.post("/api/copy")
async def copy(request: Request) -> Response:
    ctx = get_context(request)
    body = await read_json(request, CopyRequest)
    check_model_ref(ctx.config.allow_model_paths, body.source, "source")
    await asyncio.to_thread(ctx.residency.store.copy, body.source, body.destination)
    return Response(status_code=200)


@router.delete("/api/delete")
async def delete(request: Request) -> Response:
    ctx = get_context(request)
    body = await read_json(request, _Named)
    name = body.target()
    await ctx.residency.unload(ctx.residency.key(name))
    await asyncio.to_thread(ctx.residency.store.remove, name)
    return Response(status_code=200)


@router.post("/api/push")
async def push(request: Request) -> Response:
    raise NotImplementedByEmber(
        "push is not supported: no model registry is configured; copy the model's folder "
        "(EMBER_HOME/models/NAME/TAG) to your bucket and 'ember pull' it from there"
    )


@router.head("/api/blobs/{digest}")
async def blob_exists(digest: str, request: Request) -> Response:
    from ember.registry.blobs import parse_digest

    store = get_context(request).residency.store
    return Response(status_code=200 if store.blobs.has(parse_digest(digest)) else 404)


@router.post("/api/blobs/{digest}")
async def blob_upload(digest: str, request: Request) -> Response:
    from ember.registry.blobs import parse_digest

    store = get_context(request).residency.store
    sha = parse_digest(digest)
    if store.blobs.has(sha):
        return Response(status_code=200)
    await store.blobs.receive(without_stalls(request.stream()), sha)
    return Response(status_code=201)


@router.post("/api/pull")
async def pull(request: Request) -> Response:
    ctx = get_context(request)
    body = await read_json(request, PullRequest)
    target = body.target()
    check_model_ref(ctx.config.allow_model_paths, target)
    if body.source is not None:
        check_model_ref(ctx.config.allow_model_paths, body.source, "source")
    run = _pull_job(ctx, target, body.source)
    return await _progress_response(run, body.stream is not False)


@router.post("/api/create")
async def create(request: Request) -> Response:
    from ember.registry.create import CreateSpec, create

    ctx = get_context(request)
    body = await read_json(request, CreateRequest)
    name = body.target()
    if body.quantize:
        raise InvalidRequestError("quantize is not supported; create from a quantized checkpoint")
    if body.adapters:
        raise InvalidRequestError("adapters are not supported yet", param="adapters")
    spec = CreateSpec(body.from_, body.files or {}, body.template, body.system, body.parameters)
    if body.modelfile:  # older clients send a Modelfile; explicit fields win over it
        from dataclasses import replace

        from ember.registry.modelfile import parse_modelfile

        parsed = parse_modelfile(body.modelfile)
        spec = replace(
            parsed,
            base=spec.base or parsed.base,
            files=spec.files,
            template=spec.template if spec.template is not None else parsed.template,
            system=spec.system if spec.system is not None else parsed.system,
            parameters={**(parsed.parameters or {}), **(spec.parameters or {})} or None,
        )

    def job(report: Callable[[dict[str, Any]], None]) -> None:
        create(ctx.residency.store, name, spec, lambda s: report({"status": s}))

    if spec.base is None and not spec.files:
        raise InvalidRequestError("give 'from' (a model or model folder) or 'files'", param="from")
    if spec.base is not None:
        check_model_ref(ctx.config.allow_model_paths, spec.base, "from")
    check_create_spec(spec)  # before anything is written
    return await _progress_response(job, body.stream is not False)


def check_create_spec(spec: CreateSpec) -> None:
    """400 for a template or parameters that would leave a model no request can use."""
    from ember.server.protocol_ollama import check_parameters, check_template

    if spec.template is not None:
        check_template(spec.template)
    if spec.parameters:
        check_parameters(spec.parameters)


Job = Callable[[Callable[[dict[str, Any]], None]], None]


def _pull_job(ctx: ServerContext, target: str, source: str | None) -> Job:
    from ember.registry.pull import pull
    from ember.registry.remote import is_path, is_uri

    store = ctx.residency.store
    if source is None and not is_uri(target):
        if is_path(target):
            source, target = target, ""
        else:

            def present(report: Callable[[dict[str, Any]], None]) -> None:
                report({"status": "pulling manifest"})
                try:
                    store.resolve(target)
                except ModelNotFoundError:
                    raise ModelNotFoundError(
                        f"model '{target}' not found and ember has no default registry; pull "
                        "it on the server ('ember pull SOURCE NAME'), or, on a server started "
                        'with --allow-model-paths, from a URI: {"model": "hf://org/repo"} or '
                        f'{{"model": "{target}", "source": "s3://bucket/path"}}',
                        param="model",
                    ) from None

            return present
    uri, name = (source, target or None) if source is not None else (target, None)

    def job(report: Callable[[dict[str, Any]], None]) -> None:
        report({"status": "pulling manifest"})

        def progress(file: str, done: int, total: int) -> None:
            report({"status": f"pulling {file}", "digest": file, "total": total, "completed": done})

        pull(uri, store, name, progress=progress)
        report({"status": "verifying sha256 digest"})
        report({"status": "writing manifest"})

    return job


async def _progress_response(job: Job, stream: bool) -> Response:
    """Run `job` in a worker thread; stream the statuses it reports, ending with success."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    last: dict[str, Any] = {}

    def report(status: dict[str, Any]) -> None:
        # Per-file progress comes often: pass on the first, the last, and changes of status.
        partway = status.get("completed") not in (None, 0, status.get("total"))
        if partway and last.get("status") == status["status"]:
            return
        last.clear()
        last.update(status)
        loop.call_soon_threadsafe(queue.put_nowait, status)

    async def run() -> None:
        try:
            await asyncio.to_thread(job, report)
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(run())
    if not stream:
        await task
        return JSONResponse({"status": "success"})

    async def lines() -> AsyncIterator[str]:
        while (status := await queue.get()) is not None:
            yield ndjson_line(status)
        try:
            await task
        except EmberError as e:
            yield ndjson_line({"error": e.message})
            return
        except Exception as e:
            log.exception("store operation failed")
            yield ndjson_line({"error": f"internal error: {e}"})
            return
        yield ndjson_line({"status": "success"})

    # The job runs to its end even if the client leaves, so a pull or create is never left
    # half-done by a disconnect (and a pull is resumable anyway).
    return StreamingResponse(lines(), media_type=NDJSON)
