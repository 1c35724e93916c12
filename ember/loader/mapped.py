"""Copies to the GPU straight out of the page cache: an experiment (EMBER_ZERO_COPY=1).

A warm load through the ring copies every byte twice: page cache -> pinned ring (the CPU, at
~30-37 GB/s with 16 threads on the H200 host) and ring -> GPU (DMA, ~54 GB/s). Here each chunk's
range of a cached file is mapped read-only and registered with CUDA (cudaHostRegister, read-only)
by the reader threads, and the copy engine reads the page cache itself: no CPU copy. Whether
registering pages runs faster than copying them is what `bench_load.py --warm-env
EMBER_ZERO_COPY=1` measures; until it shows a gain this stays off.

Used only on CUDA, for local files that are (almost) all in the page cache; anything else goes
through the ring. Registrations are undone after the last copy has finished.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ember.envflags import env_flag
from ember.loader.pagecache import resident_fraction

PAGE = mmap.PAGESIZE
CACHED_AT_LEAST = 0.9  # share of a file's pages in the page cache for it to be mapped
_READ_ONLY = 8  # cudaHostRegisterReadOnly


def _cuda_register(ptr: int, nbytes: int) -> None:
    rc = torch.cuda.cudart().cudaHostRegister(ptr, nbytes, _READ_ONLY)
    if int(rc) != 0:
        raise RuntimeError(f"cudaHostRegister (read-only) returned {rc}")


def _cuda_unregister(ptr: int) -> None:
    torch.cuda.cudart().cudaHostUnregister(ptr)


# Indirections the tests replace (there is no CUDA in CI).
register: Callable[[int, int], None] = _cuda_register
unregister: Callable[[int], None] = _cuda_unregister


class _File:
    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            self.map = mmap.mmap(f.fileno(), self.size, prot=mmap.PROT_READ)
        self.array = np.frombuffer(self.map, dtype=np.uint8)
        self.base = int(self.array.ctypes.data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # read-only memory: only ever copied from
            self.tensor = torch.from_numpy(self.array)


class MappedFiles:
    """Windows of a directory's files, mapped and registered; `close()` after every copy out
    of them has finished."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self._registered: list[int] = []

    @classmethod
    def for_load(
        cls, root: Path | None, files: list[str], device: torch.device
    ) -> MappedFiles | None:
        """MappedFiles for this load when it applies (EMBER_ZERO_COPY=1, CUDA, local files
        at least 90% cached), else None."""
        if root is None or device.type != "cuda" or not env_flag("EMBER_ZERO_COPY", False):
            return None
        for name in files:
            try:
                fd = os.open(root / name, os.O_RDONLY)
            except OSError:
                return None  # the ring's reads report it properly
            try:
                cached = resident_fraction(fd, os.fstat(fd).st_size)
            finally:
                os.close(fd)
            if cached is None or cached < CACHED_AT_LEAST:
                return None
        return cls(root)

    def window(self, name: str, offset: int, length: int) -> torch.Tensor:
        """Bytes [offset, offset + length) of file `name` (fewer at its end), registered with
        CUDA, as a uint8 tensor. `offset` is page-aligned; windows do not overlap."""
        file = self._file(name)
        end = min(offset + length, file.size)
        if offset % PAGE or end <= offset:
            raise ValueError(f"bad window [{offset}, {end}) of '{name}'")
        register(file.base + offset, -(-(end - offset) // PAGE) * PAGE)
        with self._lock:
            self._registered.append(file.base + offset)
        return file.tensor[offset:end]

    def close(self) -> None:
        """Undo every registration and unmap (where no view is left; else when it goes)."""
        with self._lock:
            registered, self._registered = self._registered, []
            files, self._files = self._files, {}
        for ptr in registered:
            with contextlib.suppress(Exception):
                unregister(ptr)
        for file in files.values():
            del file.tensor, file.array
            with contextlib.suppress(BufferError):
                file.map.close()

    def _file(self, name: str) -> _File:
        with self._lock:
            file = self._files.get(name)
        if file is not None:
            return file
        file = _File(self.root / name)  # outside the lock: files map in parallel
        with self._lock:
            return self._files.setdefault(name, file)
