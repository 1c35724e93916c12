"""AsyncEngine: the API side of the engine, consumed from asyncio.

Requests are validated and tokenized here, handed to the core (a thread, or on CUDA a process of
its own; see core_client.py), and their new tokens come back per step to an output thread that
detokenizes, applies stop strings and hands each request's outputs to its asyncio queue. Neither
side ever waits on the other: the event loop only enqueues, the core only steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ember.engine.args import EngineArgs
from ember.engine.core_client import (
    CoreClient,
    EngineDeadError,
    InprocCoreClient,
    MPCoreClient,
)
from ember.engine.device_probe import expects_cuda
from ember.engine.messages import EngineStats
from ember.engine.output_processor import OutputProcessor
from ember.engine.request import Request, build_request
from ember.errors import InvalidRequestError
from ember.outputs import CompletionOutput, RequestOutput
from ember.sampling_params import OutputKind, SamplingParams
from ember.startup_trace import trace
from ember.tokenizer import Tokenizer

__all__ = ["AsyncEngine", "EngineDeadError"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | BaseException]


class AsyncEngine:
    def __init__(self, args: EngineArgs, multiprocess: bool | None = None) -> None:
        """Load the model (slow: call from a worker thread). `multiprocess` runs the core in its
        own process; by default it does on CUDA and not on the CPU."""
        t0 = time.monotonic()
        self.tokenizer = Tokenizer.from_dir(args.model)
        trace("tokenizer loaded")
        if multiprocess is None:
            multiprocess = expects_cuda(args.device)
        self.client: CoreClient = MPCoreClient(args) if multiprocess else InprocCoreClient(args)
        self.info = self.client.info
        self.model_name = args.served_model_name or Path(args.model).name
        self.max_model_len = self.info.max_model_len
        self.load_duration_s = time.monotonic() - t0
        self.eos_token_ids = frozenset(self.tokenizer.eos_token_ids)
        self.error: BaseException | None = None
        self._processor = OutputProcessor(self.tokenizer)
        self._lock = threading.Lock()  # guards _processor and _streams
        self._streams: dict[str, _Stream] = {}
        self._stats: EngineStats | None = None
        self._thread = threading.Thread(target=self._run, name="ember-outputs", daemon=True)
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
        arrival_time: float | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Validate now (raising InvalidRequestError), then stream outputs as they come.
        Closing the iterator before the last output aborts the request. `arrival_time`
        (time.monotonic()): when the request arrived, if before now (a server's request that
        waited for its model), so that its latencies count from there."""
        if not self.healthy:
            raise EngineDeadError("the engine has stopped; the server is restarting")
        if request_id in self._streams:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        req = build_request(
            request_id,
            prompt_token_ids,
            params,
            self.eos_token_ids,
            self.info.max_model_len,
            self.info.vocab_size,
            arrival_time,
        )
        return self._stream(req, prompt)

    async def _stream(self, req: Request, prompt: str | None) -> AsyncIterator[RequestOutput]:
        queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        rid = req.request_id
        with self._lock:
            self._streams[rid] = _Stream(asyncio.get_running_loop(), queue)
            self._processor.add(rid, prompt, req.prompt_token_ids, req.params, req.arrival_time)
        self.client.add([req])
        delta = req.params.output_kind == OutputKind.DELTA
        finished = False
        held: RequestOutput | BaseException | None = None
        try:
            while True:
                item = held if held is not None else await queue.get()
                held = None
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                # A consumer behind the engine finds several steps queued: one output for all
                # of them (as the text would have come in one larger piece), not one each.
                while delta and not item.finished and not queue.empty():
                    nxt = queue.get_nowait()
                    merged = None if isinstance(nxt, BaseException) else merge_deltas(item, nxt)
                    if merged is None:
                        held = nxt
                        break
                    item = merged
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.abort(rid)

    def abort(self, request_id: str) -> None:
        """Stop a request and free its KV blocks; a live stream gets a final 'abort' output."""
        with self._lock:
            out = self._processor.abort(request_id)
        self.client.abort([request_id])
        if out is not None:
            self._deliver(out, last=True)

    def stats(self) -> EngineStats:
        stats = self._stats
        if stats is None:
            return EngineStats(
                0, 0, len(self._streams), 0.0, 0, self.info.num_kv_blocks, 0, 0, 0, 0, 0
            )
        return replace(
            stats,
            num_unfinished=len(self._streams),
            generation_tokens_total=self._processor.generation_tokens_total,
        )

    def shutdown(self) -> None:
        self.client.shutdown()
        self._thread.join(timeout=10)

    def _deliver(self, out: RequestOutput | BaseException, last: bool, rid: str = "") -> None:
        self._deliver_all([(out, last, rid or getattr(out, "request_id", ""))])

    def _deliver_all(self, items: list[tuple[RequestOutput | BaseException, bool, str]]) -> None:
        """Hand outputs to their streams: one wake-up of each event loop per call, not one per
        output (a step at 256 concurrent requests would otherwise wake the loop 256 times)."""
        puts: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Any], Any]]] = {}
        with self._lock:
            for out, last, rid in items:
                stream = self._streams.pop(rid, None) if last else self._streams.get(rid)
                if stream is not None:
                    puts.setdefault(stream.loop, []).append((stream.queue, out))
        for loop, batch in puts.items():
            with contextlib.suppress(RuntimeError):  # the client's event loop is gone
                loop.call_soon_threadsafe(_put_all, batch)

    def _run(self) -> None:
        try:
            while (step := self.client.get()) is not None:
                with self._lock:
                    outputs, to_abort = self._processor.process(step.outputs)
                self._stats = step.stats
                if to_abort:
                    self.client.abort(to_abort)
                self._deliver_all([(o, o.finished, o.request_id) for o in outputs])
        except BaseException as e:  # the core is gone: fail every live request
            log.error("engine failed: %s", e)
            self.error = e
            with self._lock:
                ids = list(self._streams)
            for rid in ids:
                self._deliver(EngineDeadError(f"the engine failed: {e}"), last=True, rid=rid)


def merge_deltas(first: RequestOutput, then: RequestOutput) -> RequestOutput | None:
    """Two consecutive DELTA outputs of one request as one, or None where they do not merge
    (several sequences per request)."""
    if len(first.outputs) != 1 or len(then.outputs) != 1:
        return None
    a, b = first.outputs[0], then.outputs[0]
    if a.index != b.index:
        return None
    logprobs = None
    if a.logprobs is not None or b.logprobs is not None:
        logprobs = (a.logprobs or []) + (b.logprobs or [])
    out = CompletionOutput(
        b.index,
        a.text + b.text,
        a.token_ids + b.token_ids,
        b.finish_reason,
        b.stop_reason,
        logprobs,
        b.cumulative_logprob,
    )
    return replace(then, outputs=[out])


def _put_all(batch: list[tuple[asyncio.Queue[Any], Any]]) -> None:
    for queue, item in batch:
        queue.put_nowait(item)
