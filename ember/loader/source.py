"""Where a model's files live: one interface over local disks, object stores and HTTP servers.

A Source names files relative to the model's root ("config.json", "model-00001-of-00004.safetensors")
and reads byte ranges of them into a caller's buffer, so that weights go from the wire or the disk
straight into the loader's pinned ring without an intermediate copy in Python.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from ember.errors import ModelLoadError


class MissingFileError(ModelLoadError):
    """The file does not exist (as opposed to: it exists but cannot be read)."""


class ReadTimeoutError(ModelLoadError):
    """A read took longer than the source allows (a slow link or a stalled connection)."""


@dataclass(frozen=True, slots=True)
class Mapping:
    """A file mapped read-only into this process."""

    address: int
    size: int
    owner: object  # the mapping stays in place while this is referenced


class Source(ABC):
    """A model's files. Methods are called from many threads at once and must be thread-safe."""

    uri: str
    # Reads run on this many threads by default; object stores want more requests in flight
    # than a local disk does.
    concurrency: int = 16
    # Reads start at file offsets that are multiples of this and cover whole multiples of it
    # (O_DIRECT needs 4 KiB); 1 where any range works.
    alignment: int = 1

    @abstractmethod
    def list_files(self) -> list[str] | None:
        """Every file under the root (relative names, sorted), or None where the source cannot
        list (a plain HTTP server): callers then probe for the names they need."""

    @abstractmethod
    def size(self, name: str) -> int:
        """The file's size in bytes; MissingFileError if it does not exist, ModelLoadError if it
        cannot be told (denied, unreachable)."""

    @abstractmethod
    def read_into(self, name: str, offset: int, out: memoryview) -> int:
        """Fill `out` with the file's bytes from `offset`; returns the bytes read, fewer than
        len(out) only where the file ends first."""

    def exists(self, name: str) -> bool:
        try:
            self.size(name)
        except MissingFileError:
            return False
        return True

    def read_file(self, name: str) -> bytes:
        """A whole (small) file: config.json, the shard index."""
        size = self.size(name)
        buf = bytearray(size)
        got = self.read_into(name, 0, memoryview(buf)) if size else 0
        if got != size:
            raise ModelLoadError(f"'{self.location(name)}' ended after {got} of {size} bytes")
        return bytes(buf)

    def location(self, name: str) -> str:
        """The file as a user would name it in an error message."""
        return f"{self.uri.rstrip('/')}/{name}"

    def local_dir(self) -> Path | None:
        """The directory on this machine that holds the files, if there is one."""
        return None

    def mapped(self, name: str) -> Mapping | None:
        """A read-only mapping of the whole file, for copies to a device straight out of the
        page cache; None where the file is not mapped that way (it is not local, or it is read
        from the disk). It stays mapped while the source is open or its owner is referenced."""
        return None

    def loaded(self) -> None:  # noqa: B027 (a hook; most sources need nothing)
        """Called once every weight byte has been read: a write-through cache commits here."""

    def close(self) -> None:  # noqa: B027 (most sources hold nothing to release)
        """Release open files and connections."""


def resolve_source(uri: str | Path, cache_dir: str | Path | None = None) -> Source:
    """The Source for a local path, `file://`, `s3://`, `gs://`, `http(s)://` or `hf://` URI.

    With `cache_dir`, a remote model is also written through to `cache_dir/<scheme>/<path>` while
    it streams, and later calls read that complete local copy instead (see cache.py).
    """
    text = str(uri)
    scheme, sep, _ = text.partition("://")
    if not sep or scheme == "file":
        from ember.loader.local import LocalSource

        return LocalSource(text.removeprefix("file://") if sep else text)
    remote: Source
    if scheme == "hf":
        from ember.loader.hf import hf_source

        remote = hf_source(text)
    elif scheme in ("s3", "gs", "http", "https"):
        from ember.loader.remote import ObjectStoreSource

        remote = ObjectStoreSource(text)
    else:
        raise ModelLoadError(
            f"cannot load from '{text}': unknown scheme '{scheme}://'; use a local path, "
            "file://, s3://, gs://, http(s):// or hf://org/name[@revision]"
        )
    if cache_dir is None or remote.local_dir() is not None:
        return remote
    from ember.loader.cache import cached_source

    return cached_source(remote, Path(cache_dir))
