"""Which models are loaded: several at once, each kept for its keep-alive after its last request.

A request for a model takes a `Lease` on it (loading it first if needed); the model is never
unloaded while leased. When its last lease ends the model's keep-alive starts: it is unloaded
when that runs out, at once for 0, never for a negative one. Loading a model when
max_loaded_models are loaded (or, on a GPU, when its weights do not fit in free memory) unloads
an idle one first, the one whose keep-alive ends soonest (then the least recently used); with
none idle the request waits until one is. Preloaded models (the served MODEL and --preload) stay
until a request's keep_alive says otherwise.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ember.config import ServeConfig, parse_duration
from ember.errors import InvalidRequestError, ModelLoadError, ModelNotFoundError
from ember.server.metrics import EngineSnapshot, snapshot_of
from ember.server.model_refs import check_model_ref
from ember.server.served_model import ServedModel, base_name

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine
    from ember.registry import ModelStore

log = logging.getLogger("ember.server")

FOREVER = math.inf
# Longer keep-alives are forever: a deadline past this is no deadline (and past year 9999,
# not a date /api/ps could show).
_FOREVER_FROM_S = 100 * 365 * 24 * 3600.0
_WAKE_S = 1.0  # a waiting request re-checks this often even if no one wakes it


def keep_alive_seconds(value: str | float | None) -> float | None:
    """A request's keep_alive in seconds (inf: forever); None where the request gave none."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidRequestError("keep_alive must be a duration or seconds", param="keep_alive")
    if isinstance(value, int | float):
        seconds = float(value)
        if math.isnan(seconds):
            raise InvalidRequestError("keep_alive must be a number, not NaN", param="keep_alive")
    else:
        try:
            seconds = parse_duration(str(value))
        except ValueError as e:
            raise InvalidRequestError(
                f"invalid keep_alive {value!r}: {e}", param="keep_alive"
            ) from None
    return FOREVER if seconds < 0 or seconds >= _FOREVER_FROM_S else seconds


@dataclass(slots=True, eq=False)
class Resident:
    key: str
    served: ServedModel
    default_keep_alive: float  # seconds when a request gives none; inf for preloaded models
    keep_alive: float = 0.0  # seconds, from the latest request
    refs: int = 0  # leases held
    last_used: float = field(default_factory=time.monotonic)
    expires_at: float = FOREVER  # monotonic seconds; inf while leased or kept forever
    timer: asyncio.TimerHandle | None = None

    @property
    def idle(self) -> bool:
        return self.refs == 0 and self.served.ready

    def expires_wall(self) -> float:
        """Unix time the model unloads (inf: never); while leased, its keep-alive from now."""
        if self.refs:
            return time.time() + self.keep_alive
        return time.time() + (self.expires_at - time.monotonic())


class Lease:
    """One request's hold on a loaded model; release() is idempotent."""

    __slots__ = ("_released", "_residency", "engine", "resident")

    def __init__(self, residency: Residency, resident: Resident, engine: AsyncEngine) -> None:
        self._residency = residency
        self.resident = resident
        self.engine = engine
        self._released = False

    @property
    def served(self) -> ServedModel:
        return self.resident.served

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._residency._release(self.resident)


class Residency:
    def __init__(self, config: ServeConfig, store: ModelStore | None = None) -> None:
        self.config = config
        self.store = store or config.model_store()
        self.max_loaded = config.max_loaded_models
        self.residents: dict[str, Resident] = {}
        # Each preloaded model's first ServedModel: /health reports its load.
        self.preloaded: dict[str, ServedModel] = {}
        self.preload_keys = list(
            dict.fromkeys(self.key(m) for m in (config.model, *config.preload))
        )
        for k in self.preload_keys:
            self.preloaded[k] = ServedModel(config, self._model_ref(k), self.store)
        self.num_waiting = 0  # requests waiting for room to load their model
        # Per model name, what its unloaded engines counted (the metrics' counters go on).
        self.retired: dict[str, EngineSnapshot] = {}
        self.on_failed: Callable[[], None] | None = None  # a preload failed
        self._unloading = 0  # engines being shut down (their memory is not free yet)
        self._evicting: set[str] = set()  # models whose unload is scheduled or running
        self._changed = asyncio.Event()

    # Names ----------------------------------------------------------------------------------

    def key(self, requested: str | None) -> str:
        """The one name a model is known by here: "tiny" and "tiny:latest" are one model,
        --served-model-name means the primary model, folders and URIs stay as given."""
        from ember.registry import parse_name
        from ember.registry.remote import is_location

        primary = self.config.model
        text = (requested or primary).strip()
        for key, served in self._known():  # a loaded model's store name, e.g. a URI's
            if served.matches(text):
                return key
        alias = self.config.served_model_name
        if alias and base_name(text) == base_name(alias):
            text = primary
        if is_location(text):
            return text
        try:
            return str(parse_name(text))
        except InvalidRequestError:
            return text

    def _known(self) -> list[tuple[str, ServedModel]]:
        known = [(r.key, r.served) for r in self.residents.values()]
        return known + list(self.preloaded.items())

    def _model_ref(self, key: str) -> str:
        """What ServedModel resolves: the primary as configured (so it keeps its aliases)."""
        return self.config.model if key == self.key(self.config.model) else key

    @property
    def primary_key(self) -> str:
        return self.preload_keys[0]

    def check(self, requested: str | None) -> str:
        """The key of a model that is loaded or can be (raises ModelNotFoundError, 404)."""
        from ember.registry.remote import is_uri

        key = self.key(requested)
        if key not in self.preloaded:  # the command line's models are the operator's choice
            check_model_ref(self.config.allow_model_paths, key)
        if key not in self.residents and key not in self.preloaded and not is_uri(key):
            try:
                self.store.resolve(key)
            except ModelNotFoundError:  # Ollama's words: clients match on them
                raise ModelNotFoundError(f"model '{requested}' not found", param="model") from None
        return key

    # Leases ---------------------------------------------------------------------------------

    async def acquire(
        self, key: str, keep_alive: float | None = None, *, request: bool = True
    ) -> Lease:
        """A lease on the loaded model `key`, loading it (and unloading idle ones) as needed.
        Raises ModelLoadError if it fails to load. `request`: the lease is a client request's,
        counted as waiting while it waits (the server's own preload is not: an autoscaler
        reads vllm:num_requests_waiting)."""
        while True:
            r = self.residents.get(key)
            if r is None:
                if not self._room_for(key):
                    await self._wait_for_room()
                    continue
                r = self._start_load(key)
            r.refs += 1
            self._disarm(r)
            try:
                engine = await r.served.wait_ready(counted=request)
            except ModelLoadError:
                r.refs -= 1
                if self.residents.get(key) is r:
                    del self.residents[key]
                self._notify()
                raise
            except BaseException:
                self._release(r)
                raise
            if self.residents.get(key) is not r:  # unloaded while we waited: load again
                r.refs -= 1
                continue
            r.keep_alive = r.default_keep_alive if keep_alive is None else keep_alive
            return Lease(self, r, engine)

    def _start_load(self, key: str) -> Resident:
        served = self.preloaded.get(key)
        if served is None or served.ready:
            served = ServedModel(self.config, self._model_ref(key), self.store)
        keep = FOREVER if key in self.preload_keys else _default_keep_alive(self.config)
        if len(self.preload_keys) > 1 and key in self.preload_keys:
            # Preloaded models share the GPU; one alone, or one loaded on demand, takes what
            # the others leave.
            served.gpu_share = self.config.gpu_memory_utilization / len(self.preload_keys)
        r = Resident(key, served, keep, keep)
        self.residents[key] = r
        task = asyncio.get_running_loop().create_task(served.load(), name=f"ember-load-{key}")
        task.add_done_callback(lambda _t: self._notify())
        return r

    def _release(self, r: Resident) -> None:
        r.refs -= 1
        r.last_used = time.monotonic()
        if r.refs == 0 and self.residents.get(r.key) is r:
            if r.keep_alive <= 0:
                self._schedule_unload(r)
            elif r.keep_alive == FOREVER:
                r.expires_at = FOREVER
            else:
                r.expires_at = r.last_used + r.keep_alive
                loop = asyncio.get_running_loop()
                r.timer = loop.call_later(r.keep_alive, self._expire, r)
        self._notify()

    def _disarm(self, r: Resident) -> None:
        if r.timer is not None:
            r.timer.cancel()
            r.timer = None
        r.expires_at = FOREVER

    def _expire(self, r: Resident) -> None:
        r.timer = None
        if r.refs == 0 and self.residents.get(r.key) is r:
            self._schedule_unload(r)

    # Unloading ------------------------------------------------------------------------------

    def _schedule_unload(self, r: Resident) -> None:
        self._evicting.add(r.key)
        asyncio.get_running_loop().create_task(self._unload(r), name=f"ember-unload-{r.key}")

    async def unload(self, key: str) -> None:
        """Unload `key` now if idle, else as soon as its last request ends (keep_alive 0)."""
        r = self.residents.get(key)
        if r is None:
            return
        r.keep_alive = 0.0
        if r.refs == 0:
            await self._unload(r)

    async def _unload(self, r: Resident) -> None:
        try:
            if not r.served.ready:
                # Still loading (its last request gave up, or timed out, meanwhile): an unload
                # now would find no engine to stop, and the one the load then makes would run
                # on unowned. Unload once the load has ended, unless a request took it by then.
                await r.served.load_ended()
            if self.residents.get(r.key) is not r or r.refs:
                return
            self._retire(r)  # with no await before the del: a scrape sees one or the other
            del self.residents[r.key]
            self._disarm(r)
            self._unloading += 1
            try:
                log.info("unloading model %s", r.served.name)
                await asyncio.to_thread(r.served.shutdown)
                await asyncio.to_thread(_free_memory)
            finally:
                self._unloading -= 1
        finally:
            self._evicting.discard(r.key)
            self._notify()

    def _retire(self, r: Resident) -> None:
        """Keep what an unloading model's engine counted, so that its counters never fall."""
        if r.served.status != "ok" or r.served.engine is None:
            return
        counted = snapshot_of(r.served.engine.stats())
        kept = self.retired.setdefault(r.served.name, EngineSnapshot())
        kept.counted(counted, r.served.counters_base)

    async def shutdown(self) -> None:
        for r in list(self.residents.values()):
            self.residents.pop(r.key, None)
            self._disarm(r)
            await asyncio.to_thread(r.served.shutdown)

    # Room -----------------------------------------------------------------------------------

    def _room_for(self, key: str) -> bool:
        """True if `key` may start loading now; else unloads an idle model (if any) so that a
        later check may succeed."""
        if self._evicting:  # wait for that memory to be freed before judging again
            return False
        loaded = len(self.residents) + self._unloading
        if loaded < self.max_loaded and (loaded == 0 or self._fits(key)):
            return True
        idle = [r for r in self.residents.values() if r.idle]
        if idle:
            victim = min(idle, key=lambda r: (r.expires_at, r.last_used))
            log.info("unloading %s to make room for %s", victim.served.name, key)
            self._disarm(victim)
            self._schedule_unload(victim)
        return False

    def _fits(self, key: str) -> bool:
        """On a GPU: does what --gpu-memory-utilization leaves beside the loaded models hold
        the model's weights, plus headroom for activations and a KV cache?"""
        if self.config.device == "cpu" or "torch" not in sys.modules:
            return True
        import torch

        if not torch.cuda.is_available():
            return True
        try:
            need = self.store.resolve(key).size * 1.2 + 2**30
        except Exception:
            return True  # the load reports the problem
        free, total = torch.cuda.mem_get_info()
        return bool(total * self.config.gpu_memory_utilization - (total - free) >= need)

    async def _wait_for_room(self) -> None:
        self.num_waiting += 1
        try:
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), _WAKE_S)
        except asyncio.TimeoutError:
            pass
        finally:
            self.num_waiting -= 1

    def _notify(self) -> None:
        self._changed.set()

    # Reports --------------------------------------------------------------------------------

    async def preload(self) -> None:
        """Load the preloaded models one after another; a failure stops the server."""
        for key in self.preload_keys:
            try:
                lease = await self.acquire(key, request=False)
            except ModelLoadError:
                if self.on_failed is not None:
                    self.on_failed()
                return
            lease.release()

    def health(self) -> tuple[int, dict[str, Any]]:
        """200 once every preloaded model has loaded (and no loaded engine has died)."""
        for key in self.preload_keys:
            status, body = self.preloaded[key].health()
            if status != 200:
                return status, body
        for r in self.residents.values():
            if r.served.status == "ok":
                status, body = r.served.health()
                if status != 200:
                    return status, body
        status, body = self.preloaded[self.primary_key].health()
        body["models"] = [r.served.name for r in self.residents.values() if r.served.engine]
        return status, body

    def loaded(self) -> list[Resident]:
        """Models loaded and ready, most recently used first."""
        ready = [r for r in self.residents.values() if r.served.engine is not None]
        return sorted(ready, key=lambda r: -r.last_used)


def _default_keep_alive(config: ServeConfig) -> float:
    return FOREVER if config.keep_alive < 0 else config.keep_alive


def _free_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
