"""Graceful shutdown and the engine watchdog, inside uvicorn's own signal handling.

On SIGTERM or SIGINT the server drains: /health answers 503 "draining" (so load balancers stop
sending), new API requests get 503, and in-flight ones get --drain-timeout to finish. Any still
running at the deadline are stopped through their budgets (limits.Budget), so each ends with an
error chunk (NDJSON {"error": ...}, or an SSE error event and [DONE]) rather than a cut connection.
Only then does uvicorn close its connections and the process exit 0. A second signal brings the
deadline forward to now (the requests still end with their error chunk); a third closes the
connections at once. If the engine dies, the server exits 1 so that the platform restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from ember.errors import ServerBusyError
from ember.server.errors import error_response
from ember.server.limits import BUDGET_SCOPE_KEY, Budget

log = logging.getLogger("ember.server")

# Paths a draining server still answers: probes and scrapes.
PROBE_PATHS = frozenset({"/live", "/health", "/ping", "/metrics"})
# After the deadline, seconds for stopped requests to write their error chunk and close.
STOP_GRACE_S = 1.0

DRAINING_MESSAGE = "the server is shutting down; retry the request (another instance will serve it)"


class Drain:
    """In-flight API requests (their budgets), and whether the server is draining."""

    def __init__(self, timeout_s: float, request_timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self.request_timeout_s = request_timeout_s
        self.draining = False
        self.hurried = False  # a second signal: the deadline is now
        self.budgets: set[Budget] = set()

    def begin(self) -> None:
        self.draining = True

    def hurry(self) -> None:
        self.hurried = True

    async def run(self) -> None:
        """Wait for in-flight requests up to the deadline, then stop the rest."""
        n = len(self.budgets)
        log.info("draining: %d request(s) in flight, %.1fs to finish", n, self.timeout_s)
        deadline = time.monotonic() + self.timeout_s
        while self.budgets and time.monotonic() < deadline and not self.hurried:
            await asyncio.sleep(0.05)
        if self.budgets:
            why = "a second signal" if self.hurried else "drain deadline"
            log.warning("%s: stopping %d request(s)", why, len(self.budgets))
            for budget in list(self.budgets):
                budget.stop(ServerBusyError(DRAINING_MESSAGE))
            deadline = time.monotonic() + STOP_GRACE_S
            while self.budgets and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        log.info("drained")


class DrainGuard:
    """ASGI middleware: refuses API requests while draining (503) and gives each admitted one a
    Budget (its --request-timeout, and the drain's stop), tracked until its response ends."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            response = error_response(scope["path"], 503, DRAINING_MESSAGE)
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        budget = Budget(self.drain.request_timeout_s)
        scope[BUDGET_SCOPE_KEY] = budget
        self.drain.budgets.add(budget)
        try:
            await self.app(scope, receive, send)
        finally:
            budget.close()
            self.drain.budgets.discard(budget)


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose signals start a drain instead of closing connections at once, and
    which stops (exit code 1) once `engine_failed()` gives a reason (the watchdog)."""

    def __init__(
        self, config: uvicorn.Config, drain: Drain, engine_failed: Callable[[], str | None]
    ) -> None:
        super().__init__(config)
        self.drain = drain
        self.engine_failed = engine_failed
        self.exit_code = 0
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in a signal handler: only set flags; on_tick does the work. The signal is not
        # recorded for re-raising (uvicorn would then die by it): a finished drain exits 0.
        if not self.started or (self.drain.draining and self.drain.hurried):
            self.force_exit = self.should_exit
            self.should_exit = True
        elif self.drain.draining:
            self.drain.hurry()
        else:
            self.drain.begin()

    async def on_tick(self, counter: int) -> bool:
        if self.drain.draining and self._drain_task is None:
            self._drain_task = asyncio.create_task(self._run_drain(), name="ember-drain")
        reason = self.engine_failed() if self.exit_code == 0 else None
        if reason is not None:
            log.error("%s; exiting so that the platform restarts the server", reason)
            self.exit_code = 1
            self.should_exit = True
        return await super().on_tick(counter)

    async def _run_drain(self) -> None:
        try:
            await self.drain.run()
        finally:
            self.should_exit = True
