"""Write-through cache for remote models: the bytes a load reads are also written to a local
directory, so the next start (a restart on the same node, a warm pool) reads from disk.

The copy is `cache_dir/<scheme>/<bucket or host or repo>/<path>/`, a model directory like any
other: its files, then `.ember-cache.json` written last, once the load has read every weight.
A directory without that marker is incomplete and is rewritten. Delete it to refetch a model
whose remote copy changed. A failure to write the cache never fails the load.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from pathlib import Path

from ember.errors import ModelLoadError
from ember.loader.files import is_safe_name
from ember.loader.local import LocalSource
from ember.loader.source import Source

log = logging.getLogger(__name__)

MARKER = ".ember-cache.json"
PARTIAL = ".partial"
# Small files a served model needs besides its weights (tokenizer, templates), fetched on commit
# where the source cannot list.
KNOWN_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "model.safetensors.index.json",
)
SMALL_FILE_BYTES = 64 * 1024 * 1024


def cache_path(cache_dir: Path, uri: str) -> Path:
    """cache_dir/s3/bucket/prefix for s3://bucket/prefix (hf://org/name@rev likewise)."""
    scheme, _, rest = uri.partition("://")
    parts = [re.sub(r"[^A-Za-z0-9._@=-]", "_", p) for p in rest.split("/") if p]
    parts = [p for p in parts if p not in (".", "..")]
    return cache_dir.joinpath(scheme or "local", *parts)


def cached_source(remote: Source, cache_dir: Path) -> Source:
    root = cache_path(cache_dir, remote.uri)
    if _complete(root, remote.uri):
        remote.close()
        return LocalSource(root)
    return CachingSource(remote, root)


def _complete(root: Path, uri: str) -> bool:
    try:
        marker = json.loads((root / MARKER).read_text(encoding="utf-8"))
        files: dict[str, int] = marker["files"]
        return marker["uri"] == uri and all(
            (root / name).stat().st_size == size for name, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


class CachingSource(Source):
    """Reads from `remote`; every range read is also written at its offset into root/NAME.partial."""

    def __init__(self, remote: Source, root: Path) -> None:
        self.remote = remote
        self.root = root
        self.uri = remote.uri
        self.concurrency = remote.concurrency
        self.alignment = remote.alignment
        self._lock = threading.Lock()
        self._fds: dict[str, int] = {}
        self._broken = False

    def list_files(self) -> list[str] | None:
        return self.remote.list_files()

    def size(self, name: str) -> int:
        return self.remote.size(name)

    def location(self, name: str) -> str:
        return self.remote.location(name)

    def read_into(self, name: str, offset: int, out: memoryview) -> int:
        got = self.remote.read_into(name, offset, out)
        fd = self._fd(name)
        if fd is not None and got:
            try:
                os.pwrite(fd, out[:got], offset)
            except OSError as exc:
                self._give_up(exc)
        return got

    def _fd(self, name: str) -> int | None:
        with self._lock:
            if self._broken:
                return None
            fd = self._fds.get(name)
            if fd is None:
                if not is_safe_name(name):  # files.py refuses such shards; never write one
                    self._broken = True
                    return None
                try:
                    path = self.root / (name + PARTIAL)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
                    os.ftruncate(fd, self.remote.size(name))
                except (OSError, ModelLoadError) as exc:
                    self._broken = True
                    log.warning("not caching %s in %s: %s", self.uri, self.root, exc)
                    return None
                self._fds[name] = fd
            return fd

    def _give_up(self, exc: Exception) -> None:
        with self._lock:
            if not self._broken:
                log.warning("not caching %s in %s: %s", self.uri, self.root, exc)
            self._broken = True

    def loaded(self) -> None:
        """Fetch the small files, move every file into place, then write the marker."""
        try:
            for name in self._small_files():
                if name not in self._fds:
                    self.read_file(name)
            with self._lock:
                if self._broken:
                    return
                sizes: dict[str, int] = {}
                for name, fd in list(self._fds.items()):
                    del self._fds[name]  # closed once, here, whatever happens next
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    os.replace(self.root / (name + PARTIAL), self.root / name)
                    sizes[name] = self.remote.size(name)
                tmp = self.root / (MARKER + PARTIAL)
                tmp.write_text(json.dumps({"uri": self.uri, "files": sizes}), encoding="utf-8")
                os.replace(tmp, self.root / MARKER)
        except (OSError, ModelLoadError) as exc:
            self._give_up(exc)

    def _small_files(self) -> list[str]:
        listing = self.remote.list_files()
        if listing is not None:
            return [
                n
                for n in listing
                if not n.endswith(".safetensors")
                and is_safe_name(n)
                and self.remote.size(n) <= SMALL_FILE_BYTES
            ]
        return [n for n in KNOWN_FILES if self.remote.exists(n)]

    def close(self) -> None:
        """After a load that did not finish (loaded() commits and clears the files): its
        partial copies, allocated at their full size, are removed."""
        with self._lock:
            for name, fd in self._fds.items():
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(self.root / (name + PARTIAL))
            self._fds.clear()
        self.remote.close()
