"""AsyncEngine: an LLMEngine stepped by a background thread, consumed from asyncio.

The API side (event loop) validates and enqueues requests and reads their outputs from
per-request asyncio queues; the engine thread adds, aborts and steps between model runs, so
tokenizing and streaming never wait on a step and a step never waits on the event loop.
torch releases the GIL inside kernels, so both make progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from ember.engine.args import EngineArgs
from ember.engine.core import EngineStats
from ember.engine.llm_engine import LLMEngine
from ember.engine.request import Request
from ember.errors import EmberError, InvalidRequestError
from ember.outputs import RequestOutput
from ember.sampling_params import SamplingParams

log = logging.getLogger(__name__)


class EngineDeadError(EmberError):
    status_code = 503


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | BaseException]


class AsyncEngine:
    def __init__(self, args: EngineArgs) -> None:
        self.engine = LLMEngine(args)
        self.tokenizer = self.engine.tokenizer
        self.model_name = args.served_model_name or Path(args.model).name
        self.max_model_len = self.engine.max_model_len
        self.load_duration_s = self.engine.load_duration_s
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._new: list[tuple[Request, str | None]] = []
        self._aborts: list[str] = []
        self._streams: dict[str, _Stream] = {}
        self._wake = threading.Event()
        self._stopped = False
        self._stats = self.engine.stats()
        self._thread = threading.Thread(target=self._run, name="ember-engine", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        return self.error is None and self._thread.is_alive()

    def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        prompt: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Validate now (raising InvalidRequestError), then stream outputs as they come.
        Closing the iterator before the last output aborts the request."""
        if not self.healthy:
            raise EngineDeadError("the engine has stopped; the server is restarting")
        if request_id in self._streams:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        req = self.engine.make_request(request_id, prompt_token_ids, params)
        return self._stream(req, prompt)

    async def _stream(self, req: Request, prompt: str | None) -> AsyncIterator[RequestOutput]:
        queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        with self._lock:
            self._streams[req.request_id] = _Stream(asyncio.get_running_loop(), queue)
            self._new.append((req, prompt))
        self._wake.set()
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.abort(req.request_id)

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._aborts.append(request_id)
        self._wake.set()

    def stats(self) -> EngineStats:
        return replace(self._stats, num_unfinished=len(self._streams))

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=10)

    # --- the engine thread --------------------------------------------------------------------

    def _deliver(self, out: RequestOutput | BaseException, request_id: str, last: bool) -> None:
        with self._lock:
            stream = self._streams.pop(request_id, None) if last else self._streams.get(request_id)
        if stream is None:
            return
        with contextlib.suppress(RuntimeError):  # the client's event loop is gone
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, out)

    def _run(self) -> None:
        try:
            while not self._stopped:
                self._wake.clear()
                with self._lock:
                    new, self._new = self._new, []
                    aborts, self._aborts = self._aborts, []
                for req, prompt in new:
                    self.engine.add(req, prompt)
                if aborts:
                    for out in self.engine.abort(aborts):
                        self._deliver(out, out.request_id, last=True)
                    with self._lock:
                        for rid in aborts:
                            self._streams.pop(rid, None)
                if not self.engine.has_unfinished():
                    self._stats = self.engine.stats()
                    self._wake.wait()
                    continue
                outputs = self.engine.step()
                self._stats = self.engine.stats()
                for out in outputs:
                    self._deliver(out, out.request_id, last=out.finished)
        except BaseException as e:  # the engine is unusable: fail every live request
            log.exception("engine step failed")
            self.error = e
            with self._lock:
                ids = list(self._streams)
            for rid in ids:
                self._deliver(EngineDeadError(f"the engine failed: {e}"), rid, last=True)
