"""Content-addressed blobs: `$EMBER_HOME/blobs/sha256-<hex>`, shared by every model that holds
the same bytes. Blobs are immutable: a blob is written under a temp name and renamed into place
once its sha256 is known, so a crash never leaves a blob whose name lies about its bytes."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from ember.errors import InvalidRequestError

CHUNK_BYTES = 8 * 1024 * 1024
_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")


def parse_digest(text: str) -> str:
    """'sha256:<hex>' or 'sha256-<hex>' -> the lower-case hex; 400 otherwise."""
    match = _DIGEST.fullmatch(text.strip().lower())
    if match is None:
        raise InvalidRequestError(
            f"invalid digest {text!r}; expected 'sha256:' followed by 64 hex digits",
            param="digest",
        )
    return match[1]


def file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


def link_or_copy(src: Path, dst: Path) -> None:
    """Make `dst` hold `src`'s bytes: a hard link where the file system allows, else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class Blobs:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / f"sha256-{sha256}"

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def _tmp(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / f".tmp-{uuid.uuid4().hex}"

    def adopt(self, file: Path, sha256: str) -> Path:
        """Make `file` (whose sha256 is known) a blob, and `file` a hard link to that blob, so
        that the bytes are stored once whichever model holds them. Returns the blob's path."""
        blob = self.path(sha256)
        if not blob.is_file():
            self.add_link(file, sha256)
        elif not os.path.samefile(blob, file):
            tmp = file.with_name(f".{file.name}.{uuid.uuid4().hex}")
            try:
                os.link(blob, tmp)
                os.replace(tmp, file)  # the duplicate's bytes are freed
            except OSError:
                tmp.unlink(missing_ok=True)  # no hard links here: both copies stay
        return blob

    def add_link(self, file: Path, sha256: str) -> None:
        """Make the blob `sha256` a hard link to `file` (a copy where links are impossible). Only
        for a file the store owns (a model folder under models/); see `copy_in` for others."""
        tmp = self._tmp()
        link_or_copy(file, tmp)
        os.replace(tmp, self.path(sha256))

    def copy_in(self, file: Path) -> str:
        """Store a copy of `file` (a user's file the store does not own: never a link to it, so
        that writing to it later cannot change a blob); returns the copy's sha256. The digest is
        taken from the copy, so a file changed meanwhile is still stored under its true name."""
        tmp = self._tmp()
        try:
            shutil.copyfile(file, tmp)  # reflink / copy_file_range where the system has them
            sha = file_sha256(tmp)
            if not self.has(sha):
                os.replace(tmp, self.path(sha))
        finally:
            tmp.unlink(missing_ok=True)
        return sha

    def write(self, data: bytes) -> str:
        """Store bytes; returns their sha256."""
        sha = hashlib.sha256(data).hexdigest()
        if not self.has(sha):
            tmp = self._tmp()
            tmp.write_bytes(data)
            os.replace(tmp, self.path(sha))
        return sha

    async def receive(self, chunks: AsyncIterator[bytes], expected: str) -> int:
        """Store a streamed upload that must hash to `expected`; returns its size in bytes.
        A mismatch stores nothing and raises InvalidRequestError."""
        tmp = self._tmp()
        hasher = hashlib.sha256()
        size = 0
        try:
            with tmp.open("wb") as out:
                async for chunk in chunks:
                    out.write(chunk)
                    hasher.update(chunk)
                    size += len(chunk)
            if hasher.hexdigest() != expected:
                raise InvalidRequestError(
                    f"digest mismatch: the upload's sha256 is {hasher.hexdigest()}, not "
                    f"{expected}; upload the file again",
                    param="digest",
                )
            os.replace(tmp, self.path(expected))
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def discard(self, shas: Iterable[str]) -> int:
        """Delete these blobs (the caller knows no manifest names them); returns bytes freed.
        Other blobs, e.g. uploads a create has yet to use, are left alone."""
        freed = 0
        for sha in shas:
            blob = self.path(sha)
            try:
                freed += blob.stat().st_size
                blob.unlink()
            except FileNotFoundError:
                continue
        return freed
