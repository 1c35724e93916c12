"""Files in a local directory, read with pread (the GIL is released for the whole system call).

Cold files are read with O_DIRECT: no page-cache copy and no readahead guessing, each large
aligned read goes to the disk as one request. Files that are mostly cached are read buffered,
at memory speed. `direct` forces either way.
"""

from __future__ import annotations

import mmap
import os
import threading
from pathlib import Path

import numpy as np

from ember.errors import ModelLoadError
from ember.loader.pagecache import resident_fraction
from ember.loader.source import Mapping, MissingFileError, Source

DIRECT_ALIGNMENT = 4096  # bytes; covers 512 B and 4 KiB logical blocks
# Below this share of cached pages, a file counts as cold and is read with O_DIRECT.
COLD_BELOW = 0.5


class LocalSource(Source):
    def __init__(self, root: str | Path, direct: bool | None = None) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            if self.root.exists():
                raise ModelLoadError(
                    f"'{self.root}' is a file, not a model directory; pass the folder that "
                    "holds it with its config.json and tokenizer files"
                )
            raise ModelLoadError(f"model directory '{self.root}' does not exist")
        self.uri = str(self.root)
        self.concurrency = 16
        self.alignment = DIRECT_ALIGNMENT
        self._direct = direct
        self._lock = threading.Lock()
        self._fds: dict[str, tuple[int, int | None]] = {}
        self._maps: dict[str, Mapping] = {}

    def list_files(self) -> list[str] | None:
        """Every file under the folder, symlinked folders followed, except a link back to a
        folder it is already inside (a link up the tree would otherwise be walked until the
        path is too long, and two such links for ever)."""
        out: list[str] = []
        # each folder walked -> the real folders it is inside, itself included
        within: dict[str, frozenset[tuple[int, int]]] = {}
        for dirpath, dirnames, names in os.walk(self.root, followlinks=True):
            try:
                info = os.stat(dirpath)
            except OSError:
                dirnames[:] = []
                continue
            here = (info.st_dev, info.st_ino)
            above = within.get(os.path.dirname(dirpath), frozenset())
            if here in above:  # a link back up: its files are listed already
                dirnames[:] = []
                continue
            within[dirpath] = above | {here}
            rel = Path(dirpath).relative_to(self.root)
            out += [str(rel / n) if rel.parts else n for n in names]
        return sorted(out)

    def size(self, name: str) -> int:
        try:
            return (self.root / name).stat().st_size
        except FileNotFoundError:
            raise MissingFileError(f"'{self.location(name)}' does not exist") from None
        except OSError as exc:
            raise ModelLoadError(f"cannot read '{self.location(name)}': {exc}") from exc

    def location(self, name: str) -> str:
        return str(self.root / name)

    def local_dir(self) -> Path | None:
        return self.root

    def read_into(self, name: str, offset: int, out: memoryview) -> int:
        buffered, direct = self._open(name)
        fd = buffered
        if direct is not None and _aligned(offset, out):
            fd = direct
        got = 0
        want = len(out)
        try:
            while got < want:
                n = os.preadv(fd, [out[got:]], offset + got)
                if n == 0:
                    break
                got += n
                if fd == direct and got % DIRECT_ALIGNMENT:
                    break  # a short O_DIRECT read ends at the end of the file
        except OSError as exc:
            raise ModelLoadError(f"cannot read '{self.location(name)}': {exc}") from exc
        return got

    def mapped(self, name: str) -> Mapping | None:
        """The file mapped read-only where it is read buffered (mostly in the page cache); None
        for a file read with O_DIRECT (cold) or an empty one. It is unmapped once the source is
        closed and nothing else holds the mapping's owner."""
        with self._lock:
            known = self._maps.get(name)
        if known is not None:
            return known
        buffered, direct = self._open(name)
        size = os.fstat(buffered).st_size
        if direct is not None or size == 0:
            return None
        try:
            owner = mmap.mmap(buffered, size, prot=mmap.PROT_READ)
        except OSError:
            return None  # a filesystem that cannot map it: the reads go through the ring
        view = np.frombuffer(owner, dtype=np.uint8)
        mapping = Mapping(int(view.ctypes.data), size, owner)
        del view  # no buffer of the mapping stays exported: it unmaps once unreferenced
        with self._lock:
            return self._maps.setdefault(name, mapping)  # another thread may have won the race

    def _open(self, name: str) -> tuple[int, int | None]:
        with self._lock:
            fds = self._fds.get(name)
        if fds is not None:
            return fds
        fds = self._open_file(name)  # outside the lock: files open in parallel
        with self._lock:
            if name in self._fds:  # another thread won the race
                _close(fds)
                return self._fds[name]
            self._fds[name] = fds
            return fds

    def _open_file(self, name: str) -> tuple[int, int | None]:
        path = str(self.root / name)
        try:
            buffered = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise ModelLoadError(f"cannot open '{path}': {exc}") from exc
        use_direct = self._direct
        if use_direct is None:
            cached = resident_fraction(buffered, os.fstat(buffered).st_size)
            use_direct = cached is not None and cached < COLD_BELOW
        direct: int | None = None
        if use_direct and hasattr(os, "O_DIRECT"):
            try:
                direct = os.open(path, os.O_RDONLY | os.O_DIRECT)
            except OSError:
                direct = None  # tmpfs and some network filesystems refuse O_DIRECT
        return buffered, direct

    def close(self) -> None:
        with self._lock:
            self._maps.clear()  # unmapped once no load's registrations hold them
            for fds in self._fds.values():
                _close(fds)
            self._fds.clear()


def _close(fds: tuple[int, int | None]) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)


def _aligned(offset: int, out: memoryview) -> bool:
    if offset % DIRECT_ALIGNMENT or len(out) % DIRECT_ALIGNMENT or not len(out):
        return False
    address = np.frombuffer(out, dtype=np.uint8).ctypes.data
    return address % DIRECT_ALIGNMENT == 0
