"""Read a local model's weights ahead into the page cache while the engine's process imports
torch (2-4.5 s on the H200 host, the longest step of a start), so that a cold disk is already
busy before the loader can run: a daemon thread reads the shards in the loader's order, skipping
those already cached.

The loader then reads those files buffered (EngineArgs.weights_prefetched) instead of with
O_DIRECT, which would go back to the disk for pages the read-ahead has brought in.

At most half the memory that is available (the cgroup's limit counted) is read ahead, so that
a small container's page cache does not evict the first shards before the loader reaches them.
Safetensors shards only (what the loader streams). EMBER_PREFETCH_WEIGHTS=0 turns it off.
Torch-free: `ember serve` calls it first thing.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from contextlib import closing
from pathlib import Path

from ember.envflags import env_flag
from ember.errors import EmberError
from ember.loader.files import weight_files
from ember.loader.local import LocalSource
from ember.loader.pagecache import resident_fraction

log = logging.getLogger("ember.loader")

# The kernel caps one WILLNEED hint at its read-ahead window (8 MiB on the GPU host), so the
# thread reads instead: sequential preads of this size, which the kernel's read-ahead keeps ahead
# of. The copy into this buffer costs ~1 s of one core per 10 GB; the disk is the limit.
CHUNK_BYTES = 8 << 20
CACHED = 0.9  # a file with this share of its pages cached is not read ahead

_lock = threading.Lock()
_started: dict[str, threading.Thread] = {}


def enabled() -> bool:
    return env_flag("EMBER_PREFETCH_WEIGHTS", True) and sys.platform.startswith("linux")


def _files(model_dir: Path) -> list[Path]:
    """The directory's safetensors shards, in the order the loader reads them; [] where it has
    none (or they cannot be listed: the loader reports that)."""
    try:
        with closing(LocalSource(model_dir)) as source:  # reading the index opens a file
            names, _ = weight_files(source)
    except EmberError:
        return []
    return [model_dir / name for name in names]


def prefetch_weights(model_dir: str | Path) -> bool:
    """Start reading `model_dir`'s weight files into the page cache (once per directory);
    True when a read-ahead is running or has run for it."""
    if not enabled():
        return False
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        return False
    key = str(path.resolve())
    with _lock:
        if key in _started:
            return True
        files = _files(path)
        if not files:
            return False
        thread = threading.Thread(
            target=_read_ahead, args=(files, budget_bytes()), name="ember-prefetch", daemon=True
        )
        _started[key] = thread
    thread.start()
    return True


def wait(model_dir: str | Path, timeout: float | None = None) -> bool:
    """Wait for `model_dir`'s read-ahead to finish; False if there is none or it goes on."""
    with _lock:
        thread = _started.get(str(Path(model_dir).expanduser().resolve()))
    if thread is None:
        return False
    thread.join(timeout)
    return not thread.is_alive()


def _read_ahead(files: list[Path], budget: int) -> None:
    buf = memoryview(bytearray(CHUNK_BYTES))
    for path in files:
        if budget <= 0:
            return
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # the loader reports unreadable files
        try:
            size = min(os.fstat(fd).st_size, budget)
            budget -= size
            cached = resident_fraction(fd, size)
            if cached is not None and cached >= CACHED:
                continue  # nothing to gain, and the copy would cost CPU beside torch's import
            os.posix_fadvise(fd, 0, size, os.POSIX_FADV_SEQUENTIAL)  # a wider read-ahead
            offset = 0
            while offset < size:
                n = os.preadv(fd, [buf[: min(CHUNK_BYTES, size - offset)]], offset)
                if n <= 0:
                    break
                offset += n
        except OSError as exc:
            log.debug("read-ahead of %s stopped: %s", path, exc)
        finally:
            os.close(fd)


def budget_bytes() -> int:
    """Half of the memory available to this process: the host's MemAvailable, or less where
    a cgroup (a container's memory limit) leaves less."""
    available = _meminfo_available()
    cgroup = _cgroup_headroom()
    if cgroup is not None:
        available = min(available, cgroup)
    return available // 2


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cgroup_headroom() -> int | None:
    """memory.max less memory.current for this process's cgroup (v2); None if unlimited."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((root / "memory.current").read_text()))
    except (OSError, ValueError):
        return None
