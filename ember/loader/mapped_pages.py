"""A file's pages in the page cache registered with CUDA for the mapped copiers
(StreamOptions.mapped_copiers): views of the mapping to copy from, registrations rounded to
whole pages, and their undoing after the load on a thread of its own, joined at exit before
CUDA is torn down."""

from __future__ import annotations

import atexit
import ctypes
import logging
import threading
import time

import numpy as np
import torch

from ember.loader import pinned

log = logging.getLogger(__name__)

PAGE = 4096  # registrations cover whole pages


def whole_pages(nbytes: int) -> int:
    """`nbytes` rounded up to whole pages."""
    return -(-nbytes // PAGE) * PAGE


def host_view(address: int, size: int) -> torch.Tensor:
    """`size` bytes of host memory at `address` (a chunk in a file's read-only mapping) as a
    uint8 tensor that does not own them: only ever copied from, while the mapping is open."""
    array = np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(address))
    return torch.from_numpy(array)


# Undoing registrations takes the driver's lock that the next CUDA calls need: begun as the load
# ended, it held up the load's own last steps by 30-70 ms on the H200 and H100. A load's
# registrations wait for `release()` (the engine calls it once it is ready; the exit hook too),
# or UNDO_AFTER_S, whichever comes first.
UNDO_AFTER_S = 10.0

_undoing: list[tuple[threading.Thread, threading.Event]] = []  # (undoer, its go) per load
_undoing_lock = threading.Lock()


def undo_later(registered: list[int], owners: list[object]) -> None:
    """Undo the registrations (their copies are done) on a thread once `release()` is called
    or UNDO_AFTER_S have passed, then let go of the mappings they are in."""
    go = threading.Event()

    def undo() -> None:
        go.wait(UNDO_AFTER_S)
        start = time.perf_counter()
        try:
            for address in registered:
                pinned.unregister(address)
        except Exception as e:  # the load is over; its outcome stands
            log.warning("undoing a registration of the page cache with CUDA failed: %s", e)
        owners.clear()
        log.info(
            "unregistered: %d chunks of the page cache in %.3f s",
            len(registered),
            time.perf_counter() - start,
        )

    thread = threading.Thread(target=undo, name="ember-unregister", daemon=True)
    with _undoing_lock:
        _undoing[:] = [(t, g) for t, g in _undoing if t.is_alive()]
        _undoing.append((thread, go))
    thread.start()


def release() -> None:
    """Undo every load's registrations now, on their threads (without waiting)."""
    with _undoing_lock:
        for _, go in _undoing:
            go.set()


def wait_for_unregistered() -> None:
    """Undo every load's registrations and wait until they are (at exit too, before CUDA is
    torn down)."""
    with _undoing_lock:
        undoing = list(_undoing)
        _undoing.clear()
    for thread, go in undoing:
        go.set()
        thread.join()


atexit.register(wait_for_unregistered)
