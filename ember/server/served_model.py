"""The one model this server serves: resolved, loaded in the background, warmed, then ready.

uvicorn starts listening while the model loads. `/health` reports the load; requests that arrive
meanwhile wait for it (as Ollama's do) instead of failing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from ember.config import ServeConfig
from ember.errors import InvalidRequestError, ModelLoadError, ModelNotFoundError
from ember.sampling_params import SamplingParams

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine
    from ember.registry import LocalModel, ModelStore

log = logging.getLogger("ember.server")

Status = Literal["loading", "ok", "failed"]


def base_name(name: str) -> str:
    """Ollama treats "tiny" and "tiny:latest" as one model."""
    name = name.strip().lower()
    return name.removesuffix(":latest")


class ServedModel:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.status: Status = "loading"
        self.phase = "starting"
        self.error: str | None = None
        self.engine: AsyncEngine | None = None
        self.local_model: LocalModel | None = None
        self.default_options: dict[str, Any] = {}  # Ollama-style options from params.json
        self.default_system: str | None = None  # the model's `system` file, as Ollama's SYSTEM
        self.started_at = time.monotonic()
        self.ready_at: float | None = None
        self.num_waiting_for_load = 0
        self.on_failed: Callable[[], None] | None = None
        self._ready = asyncio.Event()
        self._store: ModelStore | None = None
        self._names = {base_name(config.model)}
        if config.served_model_name:
            self._names.add(base_name(config.served_model_name))

    @property
    def name(self) -> str:
        """The name the APIs report: --served-model-name, else the store's name (tiny:latest)."""
        if self.config.served_model_name:
            return self.config.served_model_name
        if self.local_model is not None:
            return self.local_model.name
        return self.config.model

    def store(self) -> ModelStore:
        if self._store is None:
            from ember.registry import ModelStore

            self._store = ModelStore(self.config.home)
        return self._store

    def matches(self, requested: str) -> bool:
        return base_name(requested) in self._names

    def require(self, requested: str | None) -> None:
        """Raise ModelNotFoundError (404) unless `requested` names the served model.

        None (the field left out) means the served model, as in vLLM.
        """
        if requested is not None and not self.matches(requested):
            raise ModelNotFoundError(f"model '{requested}' not found", param="model")

    async def load(self) -> None:
        """Resolve, load and warm up the model. Never raises: failures land in status/error."""
        try:
            self.phase = "resolving model"
            store = self.store()
            local = await asyncio.to_thread(store.resolve, self.config.model)
            self.local_model = local
            self._names.add(base_name(local.name))
            self.default_options = dict(await asyncio.to_thread(store.params, local))
            self.default_system = await asyncio.to_thread(store.system, local)
            self.phase = "loading weights"
            args = self.config.engine_args(str(local.path), self.name)
            engine = await asyncio.to_thread(make_engine, args)
            self.engine = engine
            self.phase = "warming up"
            await _warm_up(engine)
            self.status = "ok"
            self.phase = "ready"
            self.ready_at = time.monotonic()
            log.info(
                "model %s ready: load %.2fs, ready %.2fs after start, max_model_len %d",
                self.name,
                engine.load_duration_s,
                self.ready_at - self.started_at,
                engine.max_model_len,
            )
        except Exception as e:  # a failed load must not kill the listener before /health says so
            self.status = "failed"
            self.phase = "failed"
            self.error = getattr(e, "message", None) or str(e) or type(e).__name__
            log.error("model %s failed to load: %s", self.config.model, self.error)
            if not isinstance(e, ModelNotFoundError | ModelLoadError | InvalidRequestError):
                log.exception("load error")
            if self.on_failed is not None:
                self.on_failed()
        finally:
            self._ready.set()

    async def wait_ready(self) -> AsyncEngine:
        """The engine, once loaded; raises ModelLoadError if the load failed."""
        if not self._ready.is_set():
            self.num_waiting_for_load += 1
            try:
                await self._ready.wait()
            finally:
                self.num_waiting_for_load -= 1
        if self.engine is None or self.status != "ok":
            raise ModelLoadError(f"model '{self.config.model}' failed to load: {self.error}")
        return self.engine

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) for /health: 200 only once loaded and warmed."""
        if self.status == "ok" and getattr(self.engine, "healthy", True) is False:
            self.status = "failed"
            self.phase = "failed"
            self.error = f"the engine stopped: {getattr(self.engine, 'error', None)}"
        if self.status == "ok":
            return 200, {"status": "ok", "model": self.name}
        body: dict[str, Any] = {
            "status": self.status,
            "model": self.name,
            "phase": self.phase,
            "elapsed_s": round(time.monotonic() - self.started_at, 3),
        }
        if self.error is not None:
            body["error"] = self.error
        return 503, body

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()


def make_engine(args: Any) -> AsyncEngine:
    from ember.engine.async_engine import AsyncEngine  # torch is imported here, off the loop

    return AsyncEngine(args)


async def _warm_up(engine: AsyncEngine) -> None:
    """Generate one token so the first real request pays no first-call costs."""
    ids = (
        engine.tokenizer.encode("Hello", add_special_tokens=True)
        or list(engine.tokenizer.eos_token_ids)[:1]
    )
    params = SamplingParams(max_tokens=1, temperature=0.0)
    async for _ in engine.generate("warmup", ids, params):
        pass
