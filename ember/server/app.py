"""The FastAPI app and the uvicorn server around it.

Start-up order: uvicorn runs the lifespan (which only starts the model load as a background
task), then binds and listens; /live answers at once, /health once the model is warm. If the load
fails, /health says so and the process exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ember import __version__
from ember.config import ServeConfig
from ember.heap import freeze_import_heap
from ember.server import anthropic_messages, health, ollama_routes, openai_routes, store_routes
from ember.server.auth import Authenticator, AuthGuard
from ember.server.browser_guard import BrowserGuard, is_loopback, origin_matcher
from ember.server.context import ServerContext
from ember.server.drain import Drain, DrainGuard, DrainingServer
from ember.server.errors import CatchUnexpected, install_error_handlers
from ember.server.http_heads import H11_INCOMPLETE_EVENT_BYTES, protocol_class
from ember.server.limits import BodyLimit
from ember.server.served_model import loads_in_flight
from ember.startup_trace import trace

log = logging.getLogger("ember.server")

# Origins Ollama allows without OLLAMA_ORIGINS: local pages and desktop-app webviews.
_DEFAULT_ORIGIN_PATTERNS = (
    r"https?://(localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(:\d+)?",
    r"(app|file|tauri|vscode-webview|vscode-file)://.*",
)


def _origin_rules(origins: tuple[str, ...]) -> tuple[list[str], str | None, bool]:
    """(exact origins, a regex of the patterned ones, any origin?) from --origins."""
    if "*" in origins:
        return [], None, True
    exact = [o for o in origins if "*" not in o]
    patterns = list(_DEFAULT_ORIGIN_PATTERNS)
    patterns += [".*".join(re.escape(part) for part in o.split("*")) for o in origins if "*" in o]
    return exact, "|".join(f"(?:{p})" for p in patterns), False


def _cors_kwargs(origins: tuple[str, ...]) -> dict[str, object]:
    exact, regex, any_origin = _origin_rules(origins)
    if any_origin:
        return {"allow_origins": ["*"]}
    return {"allow_origins": exact, "allow_origin_regex": regex}


def create_app(config: ServeConfig) -> FastAPI:
    ctx = ServerContext(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        trace("lifespan: model load started")
        load = asyncio.create_task(ctx.served.load(), name="ember-model-load")
        try:
            yield
        finally:
            if not load.done():
                load.cancel()
            await asyncio.to_thread(ctx.served.shutdown)

    app = FastAPI(
        title="ember",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.ctx = ctx
    drain = Drain(config.drain_timeout, config.request_timeout)
    app.state.drain = drain
    # Added innermost first; a request passes CORS (preflights answer unauthenticated), then
    # the browser guard (403 for a foreign Origin or, on loopback, Host), then drain (503 while
    # draining; budgets), then auth, then the body limit (bodies are read only once
    # authorised), then the catch-all that keeps a 500's connection open.
    app.add_middleware(CatchUnexpected)  # type: ignore[arg-type]
    app.add_middleware(BodyLimit, max_bytes=config.max_body_size)  # type: ignore[arg-type]
    auth = Authenticator.from_config(config)
    if auth is not None:
        app.add_middleware(
            AuthGuard,  # type: ignore[arg-type]
            auth=auth,
            protect_metrics=config.protect_metrics,
        )
    app.add_middleware(DrainGuard, drain=drain)  # type: ignore[arg-type]
    app.add_middleware(
        BrowserGuard,  # type: ignore[arg-type]
        origin_allowed=origin_matcher(*_origin_rules(config.origins)),
        loopback=is_loopback(config.host),
    )
    app.add_middleware(
        CORSMiddleware,  # type: ignore[arg-type]
        allow_methods=["*"],
        allow_headers=["*"],
        **_cors_kwargs(config.origins),  # type: ignore[arg-type]
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(store_routes.router)  # first: its /api/tags and /api/ps win
    app.include_router(ollama_routes.router)
    app.include_router(openai_routes.router)
    app.include_router(anthropic_messages.router)
    return app


def serve(config: ServeConfig) -> int:
    """Run the server until it is stopped. The exit code is 0 after a drain (SIGTERM/SIGINT),
    1 if the model failed to load or the engine died."""
    import uvicorn

    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = create_app(config)
    freeze_import_heap()  # the server's imports done (collections held since cli.main)
    ctx: ServerContext = app.state.ctx

    def engine_failed() -> str | None:
        """Why a model failed (a dead engine, a failed load), or None. health() also marks a
        model whose engine died as failed, so /health says why while the server exits."""
        status, body = ctx.served.health()
        if status != 200 and body.get("status") == "failed":
            return str(body.get("error") or "a model failed")
        return None

    server = DrainingServer(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            lifespan="on",
            http=protocol_class(config.header_timeout),
            h11_max_incomplete_event_size=H11_INCOMPLETE_EVENT_BYTES,
            # after the drain, responses still open get this long before being cancelled
            timeout_graceful_shutdown=2,
        ),
        app.state.drain,
        engine_failed,
    )

    def stop() -> None:
        server.should_exit = True

    ctx.served.on_failed = stop
    log.info(
        "ember %s serving %s on http://%s:%d", __version__, config.model, config.host, config.port
    )
    server.run()
    code = 1 if ctx.served.status == "failed" or server.exit_code else 0
    if loads_in_flight():
        exit_mid_load(code)
    return code


def exit_mid_load(code: int) -> None:
    """Stopped while a model was still loading: exit now, without waiting for the load's thread
    (a large model from a slow source could outlast any grace period) or letting the
    interpreter tear down torch beneath it. The engine core's process, if one was started, is
    killed; a write-through cache copy left unfinished has no marker and is rewritten by the
    next load (loader/cache.py)."""
    import os
    import sys

    from ember.engine.core_client import kill_core_processes

    log.info("stopped while a model was loading: exiting without waiting for the load")
    kill_core_processes()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
