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
from ember.server import health, ollama_routes, openai_routes
from ember.server.context import ServerContext
from ember.server.errors import install_error_handlers

log = logging.getLogger("ember.server")

# Origins Ollama allows without OLLAMA_ORIGINS: local pages and desktop-app webviews.
_DEFAULT_ORIGIN_PATTERNS = (
    r"https?://(localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(:\d+)?",
    r"(app|file|tauri|vscode-webview|vscode-file)://.*",
)


def _cors_kwargs(origins: tuple[str, ...]) -> dict[str, object]:
    if "*" in origins:
        return {"allow_origins": ["*"]}
    exact = [o for o in origins if "*" not in o]
    patterns = list(_DEFAULT_ORIGIN_PATTERNS)
    patterns += [".*".join(re.escape(part) for part in o.split("*")) for o in origins if "*" in o]
    return {"allow_origins": exact, "allow_origin_regex": "|".join(f"(?:{p})" for p in patterns)}


def create_app(config: ServeConfig) -> FastAPI:
    ctx = ServerContext(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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
    app.add_middleware(
        CORSMiddleware,  # type: ignore[arg-type]
        allow_methods=["*"],
        allow_headers=["*"],
        **_cors_kwargs(config.origins),  # type: ignore[arg-type]
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(ollama_routes.router)
    app.include_router(openai_routes.router)
    return app


def serve(config: ServeConfig) -> int:
    """Run the server until it is stopped; the exit code is 1 if the model failed to load."""
    import uvicorn

    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = create_app(config)
    ctx: ServerContext = app.state.ctx
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            lifespan="on",
        )
    )

    def stop() -> None:
        server.should_exit = True

    ctx.served.on_failed = stop
    log.info(
        "ember %s serving %s on http://%s:%d", __version__, config.model, config.host, config.port
    )
    server.run()
    return 1 if ctx.served.status == "failed" else 0
