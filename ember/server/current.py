"""`ctx.served`: the model the current request named, as one object the routes read.

A route calls `ctx.served.require(body.model)` first; that checks the model exists (404 if not)
and records it for the rest of the request (a ContextVar: each request runs in its own task).
From then on `ctx.served.default_options`, `.engine`, `.name`, ... are that model's, and
`ctx.start_generation` loads it. Outside a request (health, start-up, shutdown) it is the
primary model: the one `ember serve MODEL` names.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from ember.config import ServeConfig
from ember.server.residency import Residency
from ember.server.served_model import ServedModel

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine
    from ember.registry import LocalModel, ModelStore

_CURRENT: ContextVar[str | None] = ContextVar("ember_current_model", default=None)


class ModelView:
    def __init__(self, residency: Residency) -> None:
        self.residency = residency

    # The request's model --------------------------------------------------------------------

    def require(self, requested: str | None) -> str:
        """Make `requested` (None: the primary model) this request's model; 404 if it is
        neither loaded nor in the store. Returns its key."""
        key = self.residency.check(requested)
        _CURRENT.set(key)
        return key

    @property
    def key(self) -> str:
        return _CURRENT.get() or self.residency.primary_key

    def model(self) -> ServedModel:
        r = self.residency.residents.get(self.key)
        if r is not None:
            return r.served
        return self.residency.preloaded.get(self.key) or self._primary()

    def matches(self, requested: str) -> bool:
        return self.residency.key(requested) == self.key

    @property
    def config(self) -> ServeConfig:
        return self.residency.config

    @property
    def engine(self) -> AsyncEngine | None:
        return self.model().engine

    @property
    def local_model(self) -> LocalModel | None:
        return self.model().local_model

    @property
    def name(self) -> str:
        return self.model().name

    @property
    def default_options(self) -> dict[str, Any]:
        return self.model().default_options

    @property
    def default_system(self) -> str | None:
        return self.model().default_system

    @property
    def status(self) -> str:
        return self.model().status

    @property
    def num_waiting_for_load(self) -> int:
        return self.model().num_waiting_for_load

    def store(self) -> ModelStore:
        return self.residency.store

    def _primary(self) -> ServedModel:
        """The server's primary model as it was started (what its start-up reports)."""
        return self.residency.preloaded[self.residency.primary_key]

    def startup_phases(self) -> dict[str, float]:
        return self._primary().startup_phases()

    def weights_progress(self) -> tuple[int, int]:
        """The primary model's weight bytes loaded and in all."""
        primary = self._primary()
        return primary.bytes_done, primary.bytes_total

    async def wait_ready(self) -> AsyncEngine:
        """The request's model, loaded (its keep-alive restarts now)."""
        lease = await self.residency.acquire(self.key)
        lease.release()
        return lease.engine

    # The server -----------------------------------------------------------------------------

    def health(self) -> tuple[int, dict[str, Any]]:
        return self.residency.health()

    async def load(self) -> None:
        """Start-up: load the preloaded models."""
        await self.residency.preload()

    def shutdown(self) -> None:
        """Stop every engine (from a worker thread, as the server exits)."""
        for r in list(self.residency.residents.values()):
            r.served.shutdown()

    @property
    def on_failed(self) -> Callable[[], None] | None:
        return self.residency.on_failed

    @on_failed.setter
    def on_failed(self, callback: Callable[[], None] | None) -> None:
        self.residency.on_failed = callback
