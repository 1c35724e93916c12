"""How the API side talks to an EngineCore: in this process on a thread, or in a process of its own.

Both run the same loop (`core_loop`): take the messages that arrived (add / abort / shutdown),
step while there is work, and emit one CoreStep (new tokens + stats) per step. The API side feeds
requests in with `add`/`abort` and reads CoreSteps with the blocking `get`, from a thread of its own.
On CUDA the core runs in its own process, so the API process's Python work (HTTP, tokenizing,
detokenizing, streaming) never competes with the step loop for the GIL, and the API process
never imports torch (the core's process does, while the API process starts).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Protocol

from ember.bytecode_cache import enter_child
from ember.engine.args import EngineArgs
from ember.engine.messages import CoreInfo, EngineCoreOutput, EngineStats
from ember.errors import EmberError, ModelLoadError
from ember.heap import freeze_import_heap, hold_collections
from ember.startup_trace import server_started_at, set_server_started_at, trace

if TYPE_CHECKING:  # the core (and torch) is imported only where it runs
    from ember.engine.core import EngineCore

log = logging.getLogger(__name__)

Message = tuple[str, Any]  # ("add", [Request]) | ("abort", [request_id]) | ("shutdown", None)


class EngineDeadError(EmberError):
    status_code = 503


@dataclass(slots=True)
class CoreStep:
    outputs: list[EngineCoreOutput]
    stats: EngineStats

    def __reduce__(self) -> tuple[Any, ...]:
        # The core's process pickles every step: as columns, 256 outputs take ~0.01 ms instead
        # of ~0.4 ms as one dataclass each.
        columns = tuple([getattr(o, name) for o in self.outputs] for name in _OUTPUT_FIELDS)
        return (_core_step, (columns, self.stats))


_OUTPUT_FIELDS = tuple(f.name for f in fields(EngineCoreOutput))


def _core_step(columns: tuple[list[Any], ...], stats: EngineStats) -> CoreStep:
    return CoreStep([EngineCoreOutput(*row) for row in zip(*columns, strict=True)], stats)


class Inbox(Protocol):
    def take(self, wait: float | None) -> list[Message]:
        """The messages there are, after waiting up to `wait` seconds (None: until one comes)
        for a first one."""
        ...


# Quiet time before the core captures a CUDA graph left from start-up: a capture holds the
# core for ~40 ms, so it waits for a pause longer than the gaps between one client's requests.
IDLE_BEFORE_CAPTURE_S = 0.5


def core_loop(core: EngineCore, inbox: Inbox, emit: Callable[[CoreStep], None]) -> None:
    """Run until a shutdown message. Waits on the inbox only while there is nothing to step;
    after IDLE_BEFORE_CAPTURE_S without messages it captures a CUDA graph start-up left."""
    while True:
        wait: float | None = 0.0
        if not core.has_unfinished():
            wait = IDLE_BEFORE_CAPTURE_S if core.has_pending_graphs() else None
        msgs = inbox.take(wait)
        for kind, payload in msgs:
            if kind == "add":
                for req in payload:
                    core.add_request(req)
            elif kind == "abort":
                core.abort(payload)
            elif kind == "shutdown":
                return
        if core.has_unfinished():
            emit(CoreStep(core.step(), core.stats()))
        elif msgs or not core.capture_graph(idle=True):
            emit(CoreStep([], core.stats()))


class CoreClient(Protocol):
    info: CoreInfo

    def add(self, reqs: list[Any]) -> None: ...
    def abort(self, request_ids: list[str]) -> None: ...
    def get(self) -> CoreStep | None: ...  # None once shut down; EngineDeadError if it died
    def shutdown(self) -> None: ...


# --- in this process ------------------------------------------------------------------------


class _QueueInbox:
    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[Message] = queue.SimpleQueue()

    def take(self, wait: float | None) -> list[Message]:
        msgs: list[Message] = []
        if wait is None or wait > 0:
            try:
                msgs.append(self.queue.get(timeout=wait))
            except queue.Empty:
                return msgs
        while True:
            try:
                msgs.append(self.queue.get_nowait())
            except queue.Empty:
                return msgs


class InprocCoreClient:
    def __init__(self, args: EngineArgs) -> None:
        from ember.engine.core import EngineCore

        trace("engine core imported")
        self.core = EngineCore(args)
        self.info = self.core.info
        self._inbox = _QueueInbox()
        self._out: queue.SimpleQueue[CoreStep | BaseException | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ember-core", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            core_loop(self.core, self._inbox, self._out.put)
            self._out.put(None)
        except BaseException as e:
            log.exception("engine step failed")
            self._out.put(e)

    def add(self, reqs: list[Any]) -> None:
        self._inbox.queue.put(("add", reqs))

    def abort(self, request_ids: list[str]) -> None:
        self._inbox.queue.put(("abort", request_ids))

    def get(self) -> CoreStep | None:
        item = self._out.get()
        if isinstance(item, BaseException):
            raise EngineDeadError(f"the engine failed: {item!r}") from item
        return item

    def shutdown(self) -> None:
        self._inbox.queue.put(("shutdown", None))
        self._thread.join(timeout=10)


# --- in a process of its own ----------------------------------------------------------------


class _ConnInbox:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def take(self, wait: float | None) -> list[Message]:
        msgs: list[Message] = []
        if wait is None:
            msgs.append(self.conn.recv())
        elif wait > 0 and not self.conn.poll(wait):
            return msgs
        while self.conn.poll():
            msgs.append(self.conn.recv())
        return msgs


def _core_process_waiting(device: str, inbox: Connection, outbox: Connection) -> None:
    """A prespawned core: import the engine now, then load the model the API side sends. The
    weight loader's ring slots are pinned on a thread meanwhile (prepin.py)."""
    hold_collections()  # until the imports are done (frozen in _core_process_main)
    trace("core process started")
    from ember.kernel_cache import hash_triton_ahead

    hash_triton_ahead()  # Triton's cache key, hashed while torch imports
    import torch  # noqa: F401

    trace("torch imported")
    from ember.loader import prepin
    from ember.loader.source import Source
    from ember.loader.streamer import StreamOptions

    # The ring of a default load: a reader per unit of the source's concurrency, plus 4.
    prepin.start(
        device, Source.concurrency + 4, StreamOptions().chunk_bytes, threads=Source.concurrency
    )
    import ember.engine.core  # noqa: F401

    trace("engine imported")
    import_triton_kernels()
    trace("Triton kernels imported; waiting for the model")
    try:
        kind, args = inbox.recv()
    except EOFError:
        return
    trace("model to load received")
    if kind == "load":
        _core_process_main(args, inbox, outbox)


def import_triton_kernels() -> None:
    """The Triton kernels' modules (importing triton takes a while), ahead of the model."""
    import importlib

    import torch

    if not torch.cuda.is_available():
        return
    for name in ("ember.ops.triton_attention", "ember.ops.triton_kv", "ember.ops.triton_fused"):
        with contextlib.suppress(ImportError):  # no Triton: the engine falls back by itself
            importlib.import_module(name)


def _core_process_main(args: EngineArgs, inbox: Connection, outbox: Connection) -> None:
    # Start-up progress crosses to the API process as messages before "ready".
    args.progress = lambda phase, done, total: outbox.send(("progress", (phase, done, total)))
    hold_collections()  # a core spawned with the model imports the engine here
    try:
        from ember.engine.core import EngineCore

        freeze_import_heap()  # the engine imported, here or while prespawned
        core = EngineCore(args)
    except BaseException as e:
        outbox.send(("error", (type(e).__name__, str(e))))
        return
    outbox.send(("ready", core.info))
    try:
        core_loop(core, _ConnInbox(inbox), lambda step: outbox.send(("step", step)))
        outbox.send(("shutdown", None))
    except BaseException as e:
        log.exception("engine step failed")
        outbox.send(("dead", f"{type(e).__name__}: {e}"))


@dataclass(slots=True)
class _CoreProcess:
    process: mp.process.BaseProcess
    to_core: Connection
    from_core: Connection


_prespawned: _CoreProcess | None = None


PARENT_POLL_S = 0.25


def _enter(started_at: float, parent: int, target: Callable[..., None], *args: Any) -> None:
    """The core process's entry: the server's start time (for start-up traces), a watch on the
    server's process, then `target`."""
    set_server_started_at(started_at)
    enter_child()
    threading.Thread(
        target=_exit_without_parent, args=(parent,), name="ember-parent-watch", daemon=True
    ).start()
    target(*args)


def _exit_without_parent(parent: int) -> None:
    """End this process as soon as the server's is gone (killed, or exited mid-load with no
    time to stop us): a core left loading or holding the GPU serves no one. Polls the parent
    (re-parenting changes it) rather than asking the kernel for a death signal, which follows
    the spawning thread, not the process."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def _spawn(target: Callable[..., None], *args: Any) -> _CoreProcess:
    ctx = mp.get_context("spawn")
    to_core_r, to_core = ctx.Pipe(duplex=False)
    from_core, from_core_w = ctx.Pipe(duplex=False)
    process = ctx.Process(
        target=_enter,
        args=(server_started_at(), os.getpid(), target, *args, to_core_r, from_core_w),
        name="ember-core",
        daemon=True,
    )
    process.start()
    # Close our copies of the child's ends, so that its death reads as EOF here.
    to_core_r.close()
    from_core_w.close()
    return _CoreProcess(process, to_core, from_core)


def prespawn_core(device: str = "auto") -> None:
    """Start the engine core's process now, before the model is known: it imports torch (and
    Triton) while this process imports the server, and the next MPCoreClient takes it over.
    `ember serve` calls this first thing on CUDA, so the two imports overlap."""
    global _prespawned
    if _prespawned is None:
        _prespawned = _spawn(_core_process_waiting, device)


def kill_core_processes() -> None:
    """Kill this process's engine cores (its multiprocessing children) and reap them: for an
    exit that cannot wait for them to stop."""
    for child in mp.active_children():
        child.kill()
        child.join(timeout=5)


def exit_on_signal_while_starting() -> None:
    """Until the server installs its own handlers: SIGTERM or SIGINT kills the prespawned core
    and exits at once (0 for SIGTERM, 130 for SIGINT), instead of dying by the signal mid-import
    with a traceback or leaving the core to notice alone. Main thread only."""

    def stop(signum: int, _frame: object) -> None:
        kill_core_processes()
        os._exit(0 if signum == signal.SIGTERM else 128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _take_prespawned() -> _CoreProcess | None:
    global _prespawned
    taken, _prespawned = _prespawned, None
    if taken is not None and not taken.process.is_alive():
        return None
    return taken


class MPCoreClient:
    def __init__(self, args: EngineArgs) -> None:
        """Start the core's process (or take the prespawned one) and wait until it has loaded;
        its start-up progress is forwarded to args.progress (called on this thread)."""
        progress = args.progress
        args = replace(args, progress=None)  # a callable does not pickle; messages carry it
        core = _take_prespawned()
        if core is not None:
            core.to_core.send(("load", args))
            trace("model sent to the prespawned core")
        else:
            core = _spawn(_core_process_main, args)
        self.process = core.process
        self._to_core = core.to_core
        self._from_core = core.from_core
        try:
            kind, payload = self._from_core.recv()
            while kind == "progress":
                if progress is not None:
                    progress(*payload)
                kind, payload = self._from_core.recv()
        except EOFError:
            raise ModelLoadError(
                f"the engine process exited while loading (exit code {self.process.exitcode})"
            ) from None
        if kind == "error":
            name, message = payload
            raise ModelLoadError(f"{message} ({name})")
        self.info: CoreInfo = payload
        trace("core ready")
        # Sends go through a thread: a pipe that is full while the core is mid-step must never
        # block the caller (the event loop).
        self._sendq: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name="ember-core-send", daemon=True)
        self._sender.start()

    def _send_loop(self) -> None:
        while (msg := self._sendq.get()) is not None:
            try:
                self._to_core.send(msg)
            except (BrokenPipeError, OSError):
                return

    def add(self, reqs: list[Any]) -> None:
        self._sendq.put(("add", reqs))

    def abort(self, request_ids: list[str]) -> None:
        self._sendq.put(("abort", request_ids))

    def get(self) -> CoreStep | None:
        try:
            kind, payload = self._from_core.recv()
        except (EOFError, OSError):
            raise EngineDeadError(
                f"the engine process died (exit code {self.process.exitcode})"
            ) from None
        if kind == "step":
            step: CoreStep = payload
            return step
        if kind == "shutdown":
            return None
        raise EngineDeadError(f"the engine process failed: {payload}")

    def shutdown(self) -> None:
        self._sendq.put(("shutdown", None))
        self._sendq.put(None)
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
