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


_undoing: list[threading.Thread] = []  # threads undoing registrations after a load
_undoing_lock = threading.Lock()


def undo_later(registered: list[int], owners: list[object]) -> None:
    """Undo the registrations (their copies are done) on a thread, then let go of the mappings
    they are in."""

    def undo() -> None:
        start = time.perf_counter()
        try:
            for address in registered:
                pinned.unregister(address)
        except Exception as e:  # the load is over; its outcome stands
            log.warning("undoing a registration of the page cache with CUDA failed: %s", e)
        owners.clear()
        log.info(
            "unregistered: %d chunks of the page cache in %.3f s after the load",
            len(registered),
            time.perf_counter() - start,
        )

    thread = threading.Thread(target=undo, name="ember-unregister", daemon=True)
    with _undoing_lock:
        _undoing.append(thread)
    thread.start()


def wait_for_unregistered() -> None:
    """Until every load's page-cache registrations are undone (at exit too, before CUDA is torn
    down)."""
    with _undoing_lock:
        threads = list(_undoing)
        _undoing.clear()
    for thread in threads:
        thread.join()


atexit.register(wait_for_unregistered)
