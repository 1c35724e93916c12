"""Ring slots pinned before the load that needs them.

Pinning host memory costs time (cudaHostAlloc ~0.5-1 ms per MiB, registered huge pages 0.1-0.25 ms
per MiB; pinned.py): a ring of 20 x 16 MiB (the default then) took 0.16-0.3 s to pin with
cudaHostAlloc, against ~0.4 s for a whole 16 GB load into pre-pinned slots. `ember serve` starts the
engine core's process before it knows the model; that process calls `start()` as soon as torch is
imported, and a background thread pins the slots (the GIL is released while it pins)
while the main thread imports the engine and its Triton kernels. The loader's ring then `take()`s
the slots that are ready and pins any others itself, as before.

On by default: on the H200 it takes CUDA's initialisation off the start's path (the cuda_init
phase 0.15-0.20 s without, 0.00-0.07 s with, in every start measured; docs/benchmarks.md,
2026-12-03). EMBER_PREPIN=0 turns it off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import torch

from ember.envflags import env_flag
from ember.loader import workers
from ember.loader.pinned import pinned_host

log = logging.getLogger(__name__)

ALIGNMENT = 4096  # bytes; slots start page-aligned so O_DIRECT can read into them


def page_aligned(nbytes: int, pinned: bool) -> torch.Tensor:
    """A uint8 host tensor of nbytes starting on a page boundary, pinned (pinned.py) or not.
    Pinned blocks come page-aligned; plain CPU memory may not, and is then padded."""
    if pinned:
        return pinned_host(nbytes)
    raw = torch.empty(nbytes, dtype=torch.uint8)
    if raw.data_ptr() % ALIGNMENT:
        raw = torch.empty(nbytes + ALIGNMENT, dtype=torch.uint8)
    skip = -raw.data_ptr() % ALIGNMENT
    return raw[skip : skip + nbytes]


class SlotPool:
    """Host buffers of one size, filled by a background thread and taken one at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: list[torch.Tensor] = []
        self._nbytes = 0
        self._stop = False
        self.thread: threading.Thread | None = None
        self.seconds = 0.0  # how long the thread took
        self.count = 0  # buffers it allocated

    def start(
        self,
        count: int,
        nbytes: int,
        allocate: Callable[[int], torch.Tensor],
        then: Callable[[], None] | None = None,
    ) -> None:
        """Begin allocating `count` buffers of `nbytes` on a daemon thread (once), then run
        `then` there."""
        if self.thread is not None or count <= 0:
            return
        self._nbytes = nbytes
        self.thread = threading.Thread(
            target=self._fill,
            args=(count, nbytes, allocate, then),
            name="ember-prepin",
            daemon=True,
        )
        self.thread.start()

    def _fill(
        self,
        count: int,
        nbytes: int,
        allocate: Callable[[int], torch.Tensor],
        then: Callable[[], None] | None,
    ) -> None:
        self._allocate(count, nbytes, allocate)
        if then is not None:
            try:
                then()
            except Exception as e:  # an optimisation too: the load starts what is missing
                log.warning("preparing the load's threads ahead failed: %s", e)

    def _allocate(self, count: int, nbytes: int, allocate: Callable[[int], torch.Tensor]) -> None:
        t0 = time.monotonic()
        try:
            for _ in range(count):
                with self._lock:
                    if self._stop:
                        break
                buf = allocate(nbytes)
                with self._lock:
                    if self._stop:
                        break
                    self._ready.append(buf)
                    self.count += 1
        except Exception as e:  # pinning is an optimisation: the ring pins its own slots
            log.warning("pinning ring slots ahead failed: %s", e)
        self.seconds = time.monotonic() - t0

    def take(self, nbytes: int) -> torch.Tensor | None:
        """A ready buffer of exactly nbytes, or None (never waits for the thread)."""
        with self._lock:
            if nbytes != self._nbytes or not self._ready:
                return None
            return self._ready.pop()

    def release(self) -> int:
        """Stop filling and drop the buffers nobody took; returns how many were dropped."""
        with self._lock:
            self._stop = True
            dropped = len(self._ready)
            self._ready.clear()
        return dropped


_pool = SlotPool()


def start(device: str, count: int, nbytes: int, threads: int = 0) -> None:
    """Pin `count` slots of `nbytes` for the next load onto `device` (CUDA only; creating the
    CUDA context on the way, which the engine would do next anyway), then start `threads` of
    the loader's reader threads (workers.py) and torch's CUDA streams for the device, which
    the load would otherwise start on its own path (11-17 ms for 16 threads on the H100)."""
    if not device.startswith("cuda") and device != "auto":
        return
    if not env_flag("EMBER_PREPIN", True):
        return
    if not torch.cuda.is_available():
        return
    index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else None

    def allocate(n: int) -> torch.Tensor:
        with torch.cuda.device(index):  # the context of the engine's device, not device 0
            return page_aligned(n, pinned=True)

    def then() -> None:
        with torch.cuda.device(index):
            torch.cuda.Stream()  # the first makes torch's pool of streams for the device
        workers.readers.ensure(threads)

    _pool.start(count, nbytes, allocate, then)


def take(nbytes: int) -> torch.Tensor | None:
    return _pool.take(nbytes)


def release() -> None:
    """After the load: the slots left unused are freed."""
    dropped = _pool.release()
    if _pool.thread is not None:
        log.info(
            "ring slots pinned ahead of the load: %d of %d used (%.2f s on a thread)",
            _pool.count - dropped,
            _pool.count,
            _pool.seconds,
        )
