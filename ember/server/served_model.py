"""One model the server serves: resolved, loaded in the background, warmed, then ready; and
unloaded when the residency manager (residency.py) evicts it.

uvicorn starts listening while the preloaded models load. `/health` reports the load (phase, weight bytes
done and total); requests that arrive meanwhile wait for it (as Ollama's do) instead of failing.
Once ready, /health and /metrics report how long each start-up phase took.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ember.config import ServeConfig
from ember.errors import InvalidRequestError, ModelLoadError, ModelNotFoundError
from ember.loader.prefetch import prefetch_weights
from ember.registry.store import expected_name
from ember.sampling_params import SamplingParams
from ember.server.metrics import EngineSnapshot, snapshot_of
from ember.startup_trace import server_started_at, trace

if TYPE_CHECKING:
    from ember.engine.args import EngineArgs, StartupProgress
    from ember.engine.async_engine import AsyncEngine
    from ember.engine.startup import StartupTimes
    from ember.registry import LocalModel, ModelStore

log = logging.getLogger("ember.server")

Status = Literal["loading", "ok", "failed"]
T = TypeVar("T")

# The engine's start-up phases (engine/args.py StartupProgress) as /health names them.
_ENGINE_PHASES = {
    "cuda_init": "initialising CUDA",
    "weights": "loading weights",
    "kv_cache": "allocating KV cache",
    "graph_capture": "capturing CUDA graphs",
}


@dataclass(slots=True)
class Startup:
    """Seconds from process start to ready, by phase."""

    imports_s: float = 0.0  # interpreter, server and engine imports
    resolve_s: float = 0.0  # finding the model; for a URI, fetching its config and tokenizer
    engine: StartupTimes | None = None  # CUDA init, weights, KV cache, graph capture
    warmup_s: float = 0.0
    total_s: float = 0.0  # process start to ready

    def phases(self) -> dict[str, float]:
        """Phase name -> seconds, as the ember:startup_phase_seconds gauge labels them."""
        e = self.engine
        engine = (
            {
                "cuda_init": e.cuda_init_s,
                "weights": e.load_weights_s,
                "kv_cache": e.kv_cache_s,
                "graph_capture": e.graph_capture_s,
            }
            if e is not None
            else {}
        )
        return {
            "imports": self.imports_s,
            "resolve": self.resolve_s,
            **engine,
            "warmup": self.warmup_s,
            "total": self.total_s,
        }

    def body(self) -> dict[str, float | int]:
        """/health's "startup" object: each phase in seconds, and the weights read."""
        out: dict[str, float | int] = {f"{k}_s": round(v, 3) for k, v in self.phases().items()}
        if self.engine is not None:
            out["weights_bytes"] = self.engine.weights_bytes
            out["weights_gb_per_s"] = round(self.engine.weights_gb_per_s, 3)
        return out

    def summary(self) -> str:
        return ", ".join(f"{k} {v:.2f}s" for k, v in self.phases().items())


def base_name(name: str) -> str:
    """Ollama treats "tiny" and "tiny:latest" as one model."""
    name = name.strip().lower()
    return name.removesuffix(":latest")


class ServedModel:
    def __init__(
        self, config: ServeConfig, model: str | None = None, store: ModelStore | None = None
    ) -> None:
        """`model`: a store name, folder or URI (default: config.model, the server's primary
        model, which alone answers to --served-model-name)."""
        self.config = config
        self.model = model if model is not None else config.model
        self.primary = self.model == config.model
        self.status: Status = "loading"
        self.phase = "starting"
        self.error: str | None = None
        self.engine: AsyncEngine | None = None
        self.counters_base = EngineSnapshot()  # the engine's counts when it became ready
        self.local_model: LocalModel | None = None
        self.default_options: dict[str, Any] = {}  # Ollama-style options from params.json
        self.default_system: str | None = None  # the model's `system` file, as Ollama's SYSTEM
        self.started_at = time.monotonic()
        self.process_started_at = server_started_at()
        self.ready_at: float | None = None
        self.bytes_done = 0  # weight bytes read so far, of bytes_total (0 until known)
        self.bytes_total = 0
        self.startup = Startup()
        self.num_waiting_for_load = 0
        self.on_failed: Callable[[], None] | None = None
        # The share of the GPU this model's engine may take (weights, activations, KV cache);
        # None: all of --gpu-memory-utilization that other models leave (see residency.py).
        self.gpu_share: float | None = None
        self._ready = asyncio.Event()
        self._store = store
        # The store's name for the model, known before it is resolved (a URI's last part), so
        # that requests naming it wait for the load and metrics carry one label throughout.
        self._expected = expected_name(self.model)
        self._names = {base_name(self.model)}
        if self._expected is not None:
            self._names.add(base_name(self._expected))
        if config.served_model_name and self.primary:
            self._names.add(base_name(config.served_model_name))

    @property
    def name(self) -> str:
        """The name the APIs report: --served-model-name, else the store's name (tiny:latest)."""
        if self.config.served_model_name and self.primary:
            return self.config.served_model_name
        if self.local_model is not None:
            return self.local_model.name
        return self._expected or self.model

    @property
    def ready(self) -> bool:
        """The load has ended (loaded or failed)."""
        return self._ready.is_set()

    def store(self) -> ModelStore:
        if self._store is None:
            self._store = self.config.model_store()
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
        from ember.registry.remote import is_uri

        startup = self.startup
        try:
            t0 = time.monotonic()
            self.phase = "importing the engine"
            startup.imports_s = t0 - self.process_started_at
            startup.imports_s += await off_loop(import_engine)
            trace("engine's API side imported")
            t0 = time.monotonic()
            self.phase = "fetching model files" if is_uri(self.model) else "resolving model"
            store = self.store()
            local = await off_loop(lambda: store.resolve(self.model))
            self.local_model = local
            self._names.add(base_name(local.name))
            self.default_options = dict(await asyncio.to_thread(store.params, local))
            self.default_system = await asyncio.to_thread(store.system, local)
            startup.resolve_s = time.monotonic() - t0
            trace("model resolved")
            self.phase = "starting the engine"  # until the engine reports its own phases
            args = engine_args(self.config, local, self.name, store, self._on_progress)
            if not is_uri(self.model) and await asyncio.to_thread(prefetch_weights, local.path):
                args = replace(args, weights_prefetched=True)  # read while the core imports
            if self.gpu_share is not None:
                args = replace(args, gpu_memory_utilization=gpu_utilization(self.gpu_share, args))
            resolved_at = time.monotonic()
            engine = await off_loop(lambda: make_engine(args), discard=_shut_down)
            self.engine = engine
            startup.engine = engine.info.startup
            # The engine's own imports (torch: seconds) ran meanwhile, in the core's process or
            # on the CPU in this one; what the core's start waited for them is import time.
            startup.imports_s += max(0.0, startup.engine.began_at - resolved_at)
            self.phase = "warming up"
            t0 = time.monotonic()
            await _warm_up(engine)
            startup.warmup_s = time.monotonic() - t0
            trace("warmed up: ready")
            self.counters_base = snapshot_of(engine.stats())  # the warm-up's tokens are not served
            self.status = "ok"
            self.phase = "ready"
            self.ready_at = time.monotonic()
            startup.total_s = self.ready_at - self.process_started_at
            log.info(
                "model %s ready %.2fs after process start (%s), max_model_len %d",
                self.name,
                startup.total_s,
                startup.summary(),
                engine.max_model_len,
            )
        except Exception as e:  # a failed load must not kill the listener before /health says so
            self.status = "failed"
            self.phase = "failed"
            self.error = getattr(e, "message", None) or str(e) or type(e).__name__
            log.error("model %s failed to load: %s", self.model, self.error)
            if not isinstance(e, ModelNotFoundError | ModelLoadError | InvalidRequestError):
                log.exception("load error")
            if self.on_failed is not None:
                self.on_failed()
        finally:
            self._ready.set()

    def _on_progress(self, phase: str, done: int, total: int) -> None:
        """The engine's start-up progress (from the thread that builds it)."""
        self.phase = _ENGINE_PHASES.get(phase, phase)
        if phase == "weights":
            self.bytes_done, self.bytes_total = done, total

    def startup_phases(self) -> dict[str, float]:
        """Seconds per start-up phase once ready ({} before)."""
        return self.startup.phases() if self.status == "ok" else {}

    async def load_ended(self) -> None:
        """Wait until the load has ended, loaded or failed (never raises)."""
        await self._ready.wait()

    async def wait_ready(self, counted: bool = True) -> AsyncEngine:
        """The engine, once loaded; raises ModelLoadError if the load failed. `counted`: a
        request waiting, which the metrics count as waiting."""
        if not self._ready.is_set():
            self.num_waiting_for_load += counted
            try:
                await self._ready.wait()
            finally:
                self.num_waiting_for_load -= counted
        if self.engine is None or self.status != "ok":
            raise ModelLoadError(f"model '{self.model}' failed to load: {self.error}")
        return self.engine

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) for /health: 200 only once loaded and warmed."""
        if self.status == "ok" and getattr(self.engine, "healthy", True) is False:
            self.status = "failed"
            self.phase = "failed"
            self.error = f"the engine stopped: {getattr(self.engine, 'error', None)}"
        if self.status == "ok":
            return 200, {"status": "ok", "model": self.name, "startup": self.startup.body()}
        body: dict[str, Any] = {
            "status": self.status,
            "model": self.name,
            "phase": self.phase,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "elapsed_s": round(time.monotonic() - self.process_started_at, 3),
        }
        if self.error is not None:
            body["error"] = self.error
        return 503, body

    def shutdown(self) -> None:
        """Stop the engine and drop it, so that its weights and KV cache can be freed."""
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.shutdown()


async def off_loop(fn: Callable[[], T], discard: Callable[[T], None] | None = None) -> T:
    """`fn()` on a daemon thread of its own, awaited. asyncio.to_thread's workers are joined
    when the server's loop closes, so a server stopped (SIGTERM) in the middle of a load would
    wait for the whole load before exiting; this thread is not waited for (the engine core's
    process, a daemon too, is ended at exit). What `fn` returns after the wait was cancelled
    goes to `discard`."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def deliver(value: Any, error: BaseException | None) -> None:  # on the loop
        if future.cancelled():
            if error is None and discard is not None:
                threading.Thread(target=discard, args=(value,), daemon=True).start()
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def run() -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = context.run(fn)
        except BaseException as e:  # handed to the awaiting coroutine
            error = e
        try:
            loop.call_soon_threadsafe(deliver, value, error)
        except RuntimeError:  # the loop has closed: the server stopped meanwhile
            if error is None and discard is not None:
                discard(value)

    thread = threading.Thread(target=run, name="ember-model-load", daemon=True)
    with _loads_lock:
        _loads.add(thread)
    thread.start()
    return await future


_loads: set[threading.Thread] = set()  # off_loop's threads that may still run
_loads_lock = threading.Lock()


def loads_in_flight() -> bool:
    """Whether a thread of off_loop (a model's load) is still running."""
    with _loads_lock:
        _loads.difference_update([t for t in _loads if not t.is_alive()])
        return bool(_loads)


def _shut_down(engine: AsyncEngine) -> None:
    """An engine whose load finished after the server stopped waiting for it."""
    engine.shutdown()


def import_engine() -> float:
    """Import the engine's API side now (torch only where the core runs in this process, on
    the CPU); returns the seconds it took."""
    t0 = time.monotonic()
    import ember.engine.async_engine  # noqa: F401

    return time.monotonic() - t0


def make_engine(args: EngineArgs) -> AsyncEngine:
    from ember.engine.async_engine import AsyncEngine  # off the loop: it may import the core

    return AsyncEngine(args)


def engine_args(
    config: ServeConfig,
    local: LocalModel,
    name: str,
    store: ModelStore,
    progress: StartupProgress | None = None,
) -> EngineArgs:
    """The engine's arguments for a resolved model: for one named by URI, its config and
    tokenizer files are in local.path and its weights stream from local.source, written through
    to the store's cache."""
    args = config.engine_args(str(local.path), name)
    return replace(args, weights=local.source, cache_dir=str(store.cache_dir), progress=progress)


def gpu_utilization(share: float, args: EngineArgs) -> float:
    """The engine's gpu_memory_utilization for a share of the GPU: the engine sizes its KV
    cache as that fraction of the GPU less all memory in use (other models' engines too), so
    it gets what is in use now plus its share."""
    import torch

    if args.device == "cpu" or not torch.cuda.is_available():
        return args.gpu_memory_utilization
    free, total = torch.cuda.mem_get_info()
    return min(args.gpu_memory_utilization, (total - free) / total + share)


async def _warm_up(engine: AsyncEngine) -> None:
    """Run the step shapes a first user would meet, so that they pay no first-call costs (on
    CUDA, Triton compiles each kernel variant the first time it runs, up to seconds each): one
    token (a one-sequence prefill graph); on CUDA also a long prompt arriving while another
    request decodes (a mixed eager step, then decode graphs) and the same long prompt again (a
    prefix-cache hit: prefill over cached context)."""
    ids = (
        engine.tokenizer.encode("Hello", add_special_tokens=True)
        or list(engine.tokenizer.eos_token_ids)[:1]
    )
    await _drain(engine, "warmup", ids, SamplingParams(max_tokens=1, temperature=0.0))
    long_len = min(600, engine.max_model_len - 16)  # past the largest prefill graph (512)
    if not engine.info.device.startswith("cuda") or long_len < 32:
        return
    vocab = engine.info.vocab_size
    long_ids = [(7 * i + 3) % vocab for i in range(long_len)]
    decoding = asyncio.create_task(
        _drain(engine, "warmup-decode", ids, SamplingParams(max_tokens=6, temperature=0.0))
    )
    await asyncio.sleep(0)  # let it be scheduled first
    await _drain(engine, "warmup-mixed", long_ids, SamplingParams(max_tokens=2, temperature=0.0))
    await decoding
    again = long_ids + ids[:1] * 8
    await _drain(engine, "warmup-cached", again, SamplingParams(max_tokens=2, temperature=0.0))


async def _drain(
    engine: AsyncEngine, request_id: str, ids: list[int], params: SamplingParams
) -> None:
    async for _ in engine.generate(request_id, ids, params):
        pass
