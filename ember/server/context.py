"""What every route shares: the served model, admission, metrics; and the one path from a parsed
request to a running engine request."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from ember.config import ServeConfig
from ember.errors import InvalidRequestError
from ember.sampling_params import SamplingParams
from ember.server.admission import Admission
from ember.server.errors import validation_message
from ember.server.metrics import EngineSnapshot, ServerMetrics
from ember.server.served_model import ServedModel
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
        self.served = ServedModel(config)
        self.admission = Admission(config.num_parallel, config.max_queue)
        self.metrics = ServerMetrics(lambda: self.served.name, self.snapshot)

    def snapshot(self) -> EngineSnapshot:
        engine = self.served.engine
        waiting_for_load = self.served.num_waiting_for_load
        if engine is None:
            return EngineSnapshot(num_waiting=waiting_for_load)
        s = engine.stats()
        return EngineSnapshot(
            num_running=s.num_running,
            num_waiting=s.num_waiting + waiting_for_load,
            kv_cache_usage=s.kv_cache_usage,
            num_used_blocks=s.num_used_blocks,
            num_total_blocks=s.num_total_blocks,
            prompt_tokens_total=s.prompt_tokens_total,
            generation_tokens_total=s.generation_tokens_total,
            prefix_cache_queries=s.prefix_cache_queries,
            prefix_cache_hits=s.prefix_cache_hits,
            num_preemptions_total=s.num_preemptions_total,
        )

    async def wait_ready(self, request: Request) -> tuple[AsyncEngine, float]:
        """The engine and the seconds this request waited for it to load."""
        t0 = time.monotonic()
        engine = await race_disconnect(request, self.served.wait_ready())
        return engine, time.monotonic() - t0

    async def start_generation(
        self,
        request: Request,
        request_id: str,
        prepare: Callable[[AsyncEngine], Prepared],
    ) -> tuple[Generation, Prepared, float]:
        """Admit (or 503), wait for the model, prepare (may raise 400), start the engine request
        and wait for its first output. Returns the generation, what was prepared, and the load
        wait in seconds. The caller owns the generation and must aclose() it."""
        engine = self.served.engine
        slot = self.admission.acquire(engine.stats().num_unfinished if engine else 0)
        try:
            engine, load_wait = await self.wait_ready(request)
            prepared = prepare(engine)
            gen = Generation(
                engine,
                request_id,
                prepared.prompt_token_ids,
                prepared.params,
                slot,
                self.metrics.track(),
                prompt=prepared.prompt,
            )
        except BaseException:
            slot.release()
            raise
        await gen.start(request)  # on failure it has closed itself and released the slot
        return gen, prepared, load_wait


def get_context(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


async def read_json(request: Request, model: type[M]) -> M:
    """Parse the body as JSON whatever its Content-Type (curl -d sends form encoding), then
    validate it; errors are 400s naming the field."""
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequestError("missing request body")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidRequestError(f"invalid JSON body: {e}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_message(e) from None
