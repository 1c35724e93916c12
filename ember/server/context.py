"""What every route shares: the models (residency.py, and `served`: the request's model, see
current.py), admission, metrics; and the one path from a parsed request to a running engine
request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from ember.config import ServeConfig
from ember.errors import InvalidRequestError
from ember.sampling_params import SamplingParams
from ember.server.admission import Admission, Slot
from ember.server.current import ModelView
from ember.server.errors import validation_message
from ember.server.limits import parse_json
from ember.server.metrics import EngineSnapshot, ServerMetrics, snapshot_of
from ember.server.residency import Lease, Residency, keep_alive_seconds
from ember.server.streaming import Generation, race_disconnect

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine

M = TypeVar("M", bound=BaseModel)


@dataclass(slots=True)
class Prepared:
    """A request made ready for the engine: token ids, sampling params, and the prompt text."""

    prompt_token_ids: list[int]
    params: SamplingParams
    prompt: str | None = None


class ServerContext:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.residency = Residency(config)
        self.served = ModelView(self.residency)
        self.admission = Admission(config.num_parallel, config.max_queue)
        self.metrics = ServerMetrics(
            lambda: self.residency.preloaded[self.residency.primary_key].name, self.snapshots
        )

    def snapshots(self) -> dict[str, EngineSnapshot]:
        """Each loaded model's engine state; the primary's zeros while nothing is loaded."""
        out: dict[str, EngineSnapshot] = {}
        waiting = self.residency.num_waiting
        for r in self.residency.residents.values():
            served = r.served
            if served.status != "ok" or served.engine is None:  # loading or warming up
                out[served.name] = snapshot_of(None, served.num_waiting_for_load)
                continue
            s = snapshot_of(served.engine.stats(), served.num_waiting_for_load)
            out[served.name] = s.counted(EngineSnapshot(), served.counters_base)
        for name, kept in self.residency.retired.items():
            out.setdefault(name, EngineSnapshot()).counted(kept, EngineSnapshot())
        if not out:
            primary = self.residency.preloaded[self.residency.primary_key]
            out[primary.name] = EngineSnapshot()
        first = next(iter(out.values()))
        first.num_waiting += waiting  # requests waiting for room to load a model
        return out

    async def wait_ready(self, request: Request) -> tuple[AsyncEngine, float]:
        """The request's model, loaded (its keep-alive restarted), and the seconds this request
        waited for it."""
        t0 = time.monotonic()
        lease = await race_disconnect(request, self._acquire(request), budgeted=True)
        lease.release()
        return lease.engine, time.monotonic() - t0

    async def load_or_unload(self, request: Request) -> str:
        """An empty prompt: load the request's model, or with keep_alive 0 unload it. Returns
        Ollama's done_reason, "load" or "unload"."""
        if await _keep_alive(request) == 0:
            await self.residency.unload(self.served.key)
            return "unload"
        await self.wait_ready(request)
        return "load"

    async def _acquire(self, request: Request) -> Lease:
        return await self.residency.acquire(self.served.key, await _keep_alive(request))

    async def start_generation(
        self,
        request: Request,
        request_id: str,
        prepare: Callable[[AsyncEngine], Prepared],
    ) -> tuple[Generation, Prepared, float]:
        """Admit (or 503), wait for the model, prepare (may raise 400), start the engine request
        and wait for its first output. Returns the generation, what was prepared, and the load
        wait in seconds. The caller owns the generation and must aclose() it; the model stays
        loaded until then."""
        engine = self.served.engine
        slot = LeasedSlot(self.admission, engine.stats().num_unfinished if engine else 0)
        try:
            t0 = time.monotonic()
            lease = await race_disconnect(request, self._acquire(request), budgeted=True)
            slot.lease = lease
            load_wait = time.monotonic() - t0
            prepared = await prepare_request(prepare, lease.engine)
            gen = Generation(
                lease.engine,
                request_id,
                prepared.prompt_token_ids,
                prepared.params,
                slot,
                self.metrics.track(lease.served.name),
                prompt=prepared.prompt,
                arrival_time=t0,  # latencies count the wait for the model to load
            )
        except BaseException:
            slot.release()
            raise
        await gen.start(request)  # on failure it has closed itself and released the slot
        return gen, prepared, load_wait


async def prepare_request(
    prepare: Callable[[AsyncEngine], Prepared], engine: AsyncEngine
) -> Prepared:
    """The request templated and tokenized on a worker thread, so that a long prompt never
    holds the event loop (and every stream it serves): a small body can still render a large
    prompt (tools' schemas indented at every level), so every request goes there (~0.1 ms)."""
    return await asyncio.to_thread(prepare, engine)


class LeasedSlot(Slot):
    """An admission slot that also holds the request's model loaded until released."""

    __slots__ = ("lease",)

    def __init__(self, admission: Admission, engine_unfinished: int) -> None:
        admission.acquire(engine_unfinished)  # 503 when full; counts this request
        super().__init__(admission)
        self.lease: Lease | None = None

    def release(self) -> None:
        super().release()
        if self.lease is not None:
            self.lease.release()


async def _keep_alive(request: Request) -> float | None:
    """The body's keep_alive in seconds (inf: forever), None if absent. Read here so that every
    route that loads a model honours it."""
    raw = await request.body()
    if b"keep_alive" not in raw:
        return None
    data = parse_json(raw)
    return keep_alive_seconds(data.get("keep_alive")) if isinstance(data, dict) else None


def get_context(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


async def read_json(request: Request, model: type[M]) -> M:
    """Parse the body as JSON whatever its Content-Type (curl -d sends form encoding), then
    validate it; errors are 400s naming the field."""
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequestError("missing request body")
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_message(e) from None
