"""Where compiled GPU kernels are kept between starts.

Triton compiles each kernel variant the first time a process runs it (about 9 s in all for an
8B model on an H200) and caches the result on disk, by default under ~/.triton. `ember serve`
points that cache into ember's home instead, so it lives next to the models (a persistent
volume on Kubernetes), and `ember build --kernel-cache` can bake it into an image.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import cast

KERNEL_CACHE_SUBDIR = "kernels/triton"


def use_kernel_cache(home: Path) -> Path:
    """Set TRITON_CACHE_DIR to home/kernels/triton unless the environment already sets it
    (before Triton is imported: the engine core's process inherits it). Returns the folder."""
    current = os.environ.get("TRITON_CACHE_DIR")
    if current:
        return Path(current)
    path = home / KERNEL_CACHE_SUBDIR
    os.environ["TRITON_CACHE_DIR"] = str(path)
    return path


# Triton keys its on-disk cache by a hash of its own compiler: every Python file of it and its
# 416 MB shared library (`triton_key()`, computed once a process, at the first kernel call that
# misses the in-memory cache). On the H200 host that took 0.37 s of the 0.77 s first profiling
# pass, the pass that bounded `ember serve`'s weights phase (benchmarks/profile_start.py,
# docs/benchmarks.md, eighth session). hashlib and file reads release the GIL, so a thread
# started as soon as Triton is imported takes it off the start's path.
_hash_thread: threading.Thread | None = None
_hash_lock = threading.Lock()


def _triton_key() -> Callable[[], object] | None:
    for module in ("triton.runtime.cache", "triton.compiler.compiler"):  # where versions keep it
        try:
            key = getattr(importlib.import_module(module), "triton_key", None)
        except ImportError:
            continue  # no Triton (or not this module in this version)
        if callable(key):
            return cast("Callable[[], object]", key)
    return None


def _hash_triton() -> None:
    # Only a head start: whatever fails here (even importing Triton) the first kernel call
    # meets again and reports.
    with contextlib.suppress(Exception):
        key = _triton_key()
        if key is not None:
            key()


def hash_triton_ahead() -> None:
    """Start computing Triton's cache key on a daemon thread (once a process)."""
    global _hash_thread
    with _hash_lock:
        if _hash_thread is not None:
            return
        _hash_thread = threading.Thread(target=_hash_triton, name="ember-triton-key", daemon=True)
    _hash_thread.start()


def wait_triton_hash() -> None:
    """Before the first Triton kernel call: wait for the thread, if one was started (the key is
    cached per process, but two threads asking at once would both compute it)."""
    with _hash_lock:
        thread = _hash_thread
    if thread is not None:
        thread.join()
