"""One engine request owned by one HTTP request, and the responses that stream it.

Invariant: every engine request the server starts ends in exactly one of: finished, or aborted
because its client went away or its response failed. `Generation.aclose()` is the one exit;
`OwnedStreamingResponse` calls it however the response ends (even if it never starts), and the
non-streaming paths call it in `finally`. Aborting frees the request's KV blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ember.errors import EmberError
from ember.outputs import RequestOutput
from ember.sampling_params import SamplingParams
from ember.server.admission import Slot
from ember.server.errors import ClientDisconnected
from ember.server.limits import budget_of
from ember.server.metrics import RequestTracker

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine

T = TypeVar("T")

NDJSON = "application/x-ndjson"
SSE_DONE = "data: [DONE]\n\n"


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def ndjson_line(obj: Any) -> str:
    return dumps(obj) + "\n"


def sse_event(obj: Any) -> str:
    return f"data: {dumps(obj)}\n\n"


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def race_disconnect(
    request: Request, awaitable: Awaitable[T], *, budgeted: bool = False
) -> T:
    """Await `awaitable`, cancelling it and raising ClientDisconnected if the client goes away.
    With `budgeted`, the request's Budget ending first (--request-timeout, a drain's deadline)
    cancels it too and raises the budget's error: for waits that hold no engine request to
    abort (the model's load, room to load it).

    Only for use once the request body has been read: it listens on the request's receive channel.
    """
    task = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    waits: set[asyncio.Future[Any]] = {task, watcher}
    budget = budget_of(request.scope) if budgeted else None
    if budget is not None:
        stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def stop(_: EmberError) -> None:
            if not stopped.done():
                stopped.set_result(None)

        budget.on_stop(stop)
        waits.add(stopped)
    disconnected = False
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        disconnected = watcher.done() and not task.done()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if disconnected:
        raise ClientDisconnected()
    if budget is not None and budget.error is not None and task.cancelled():
        raise budget.error
    return task.result()


class Generation:
    """An engine request plus what it holds: its admission slot and its metrics tracker."""

    def __init__(
        self,
        engine: AsyncEngine,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        slot: Slot,
        tracker: RequestTracker,
        prompt: str | None = None,
        arrival_time: float | None = None,
    ) -> None:
        self.engine = engine
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.finished = False
        self._slot = slot
        self._tracker = tracker
        self._outputs = engine.generate(
            request_id, prompt_token_ids, params, prompt=prompt, arrival_time=arrival_time
        )
        self._first: RequestOutput | None = None
        self._closed = False
        self._stopped_by: EmberError | None = None  # the request's budget ended (timeout, drain)

    async def start(self, request: Request) -> None:
        """Wait for the first output, so that request errors become HTTP statuses, not stream
        errors. Raises ClientDisconnected if the client leaves first, and the budget's error if
        the request's time (limits.Budget) runs out first."""
        budget = budget_of(request.scope)
        if budget is not None:
            budget.on_stop(self._stop)
        try:
            self._first = await race_disconnect(request, _next(self._outputs))
            self._note(self._first)
        except BaseException:
            await self.aclose()
            raise

    def _stop(self, error: EmberError) -> None:
        """Abort the engine request; its final 'abort' output then raises `error` instead."""
        if not self.finished and not self._closed:
            self._stopped_by = error
            self.engine.abort(self.request_id)

    def _note(self, out: RequestOutput) -> None:
        if out.finished and self._stopped_by is not None:
            raise self._stopped_by
        self._tracker.update(out)
        if out.finished:
            self.finished = True

    async def __aiter__(self) -> AsyncIterator[RequestOutput]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
            if first.finished:
                return
        async for out in self._outputs:
            self._note(out)
            yield out
            if out.finished:
                return

    async def collect(self, request: Request) -> list[RequestOutput]:
        """All outputs (deltas) to the end, aborting if the client leaves first."""

        async def gather() -> list[RequestOutput]:
            return [out async for out in self]

        return await race_disconnect(request, gather())

    async def aclose(self) -> None:
        """Abort the engine request unless it finished, and release the admission slot.

        Closing the engine's iterator before its last output aborts the request; an iterator
        never started never reached the engine.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if not self.finished:
                self._tracker.aborted()
            aclose = getattr(self._outputs, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._slot.release()


async def _next(it: AsyncIterator[T]) -> T:
    try:
        return await it.__anext__()
    except StopAsyncIteration:
        raise RuntimeError("the engine ended a request without an output") from None


class OwnedStreamingResponse(StreamingResponse):
    """A StreamingResponse that runs `on_close` however it ends: finished, failed, disconnected,
    or never started (a body generator that never ran cannot clean up after itself)."""

    def __init__(
        self,
        content: AsyncIterator[str],
        on_close: Callable[[], Awaitable[None]],
        media_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(Exception):
                aclose = getattr(self.body_iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
            await self._on_close()
