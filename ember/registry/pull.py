"""`ember pull SOURCE [NAME]`: copy a model from anywhere the loader reads (s3://, gs://,
http(s)://, hf://, file://, a directory) into the local store as models/NAME/TAG/.

- Files land in a hidden staging folder next to the target, each as NAME.part until complete.
  A pull that was interrupted continues each .part from its length with range reads.
- sha256 is computed as bytes arrive. Where the source publishes digests (NAME.sha256,
  SHA256SUMS, see digests.py; for hf:// the Hub's record of each LFS file) a mismatch fails the
  pull, a resumed .part included; either way the digests are recorded in the model's
  .ember-pull.json.
- The finished folder is renamed into place: the store never shows half a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ember.errors import EmberError, ModelLoadError, ModelNotFoundError
from ember.loader.source import ReadTimeoutError
from ember.registry.digests import (
    MANIFESTS,
    SUFFIX,
    Digest,
    expected_digests,
    hub_digests,
    is_digest_file,
)
from ember.registry.names import parse_name
from ember.registry.remote import PROBED_FILES, default_name, is_path, is_small_file
from ember.registry.store import LocalModel, ModelStore

if TYPE_CHECKING:
    from ember.loader import Source

RECORD = ".ember-pull.json"  # in the pulled model: where it came from, each file's sha256
STATE = ".ember-pull-state.json"  # in the staging folder: the source and the files done
PART = ".part"
CHUNK_BYTES = 8 * 1024 * 1024
# After a range times out, ranges shrink by SHRINK down to MIN_CHUNK_BYTES (8 MiB -> 1 MiB ->
# 128 KiB): small enough for a link of a few KB/s within the remote timeout.
SHRINK = 8
MIN_CHUNK_BYTES = 128 * 1024
READ_AHEAD = 8  # range reads in flight per file; written in order, so a .part is a prefix

FileProgress = Callable[[str, int, int], None]  # (file name, bytes done, bytes total)


@dataclass(frozen=True, slots=True)
class PulledFile:
    name: str
    size: int  # bytes
    sha256: str
    verified_by: str | None  # the digest file it matched; None where the source offers none
    resumed_at: int  # bytes already there from an earlier, interrupted pull


@dataclass(frozen=True, slots=True)
class PullResult:
    model: LocalModel
    source: str
    files: list[PulledFile]


def pull(
    source_uri: str,
    store: ModelStore,
    name: str | None = None,
    *,
    progress: FileProgress | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> PullResult:
    """Copy the model at `source_uri` into the store as `name` (default: the source's last path
    component, tagged latest), replacing a model of that name once complete."""

    _check_source(source_uri)
    model_name = str(parse_name(name or default_name(source_uri)))
    target = store.path_for(model_name)
    staging = store.staging_path(model_name)
    # One pull of a name at a time: a second (another terminal, an init container restarted
    # while the first still runs) would append to the first one's .part files.
    with store.pull_lock(model_name, "pulling it again (the new pull resumes its files)"):
        return _pull_into(source_uri, store, model_name, target, staging, progress, chunk_bytes)


def _pull_into(
    source_uri: str,
    store: ModelStore,
    model_name: str,
    target: Path,
    staging: Path,
    progress: FileProgress | None,
    chunk_bytes: int,
) -> PullResult:
    from ember.loader import resolve_source

    source = resolve_source(source_uri)
    try:
        plan = plan_files(source)
        names = [n for n, _ in plan]
        digests = expected_digests(source, names)
        if source_uri.startswith("hf://") and source.local_dir() is None:
            digests = hub_digests(source_uri, names) | digests  # a digest file wins
        state = _State.open(staging, source.uri)
        files = []
        for n, size in plan:  # config.json comes before the weights
            files.append(
                _pull_file(source, staging, n, size, digests.get(n), state, progress, chunk_bytes)
            )
            if n == "config.json":
                _check_quantization(staging / n)
    finally:
        source.close()
    _write_json(
        staging / RECORD,
        {
            "source": source_uri,
            "pulled_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": {
                f.name: {"size": f.size, "sha256": f.sha256, "verified_by": f.verified_by}
                for f in files
            },
        },
    )
    (staging / STATE).unlink()
    _install(staging, target)
    # The pull hashed every file: the store records them as blobs without reading them again.
    store.adopt(model_name, {f.name: f.sha256 for f in files})
    return PullResult(store.resolve(model_name), source_uri, files)


def _check_source(text: str) -> None:
    """A bare name that is no folder here is what an Ollama user types (`llama3.2`): say what
    SOURCE may be rather than that a folder is missing."""
    if "://" in text or is_path(text) or _exists(Path(text)):
        return
    raise ModelNotFoundError(
        f"'{text}' is neither a folder here nor a URI: SOURCE must be a local path or a URI "
        "(file://, s3://, gs://, http(s)://, hf://). ember does not pull from the Ollama "
        f"registry; 'ollama pull {text}' does, and ember then serves the model from Ollama's "
        "store",
        param="model",
    )


def _exists(path: Path) -> bool:
    """Path.exists, False for a name too long to be a path here (ENAMETOOLONG)."""
    try:
        return path.exists()
    except OSError:
        return False


def plan_files(source: Source) -> list[tuple[str, int]]:
    """(name, size) of each file to copy: config, tokenizer, templates and digest files first,
    then the safetensors weights. Checkpoints in other formats are left behind."""
    from ember.loader import weight_files
    from ember.loader.cache import KNOWN_FILES
    from ember.loader.files import is_safe_name

    weights, _ = weight_files(source)
    listing = source.list_files()
    if listing is not None:  # a name that would leave the staging folder is never copied
        others = [n for n in listing if is_small_file(n) and is_safe_name(n)]
    else:  # a source that cannot list: ask for the names a model may hold
        probes = list(
            dict.fromkeys([*KNOWN_FILES, *PROBED_FILES, *MANIFESTS, *(w + SUFFIX for w in weights)])
        )
        with ThreadPoolExecutor(8) as pool:
            found = pool.map(lambda n: n if source.exists(n) else None, probes)
            others = [n for n in found if n is not None]
    if "config.json" not in others:
        raise ModelLoadError(
            f"no config.json in '{source.uri}'; a model needs the Hugging Face config.json next "
            "to its *.safetensors files"
        )
    names = sorted(set(others) - set(weights), key=lambda n: (is_digest_file(n), n)) + weights
    return [(n, source.size(n)) for n in names]


def _check_quantization(config: Path) -> None:
    """A quantization ember cannot serve (AWQ, GPTQ, ...) fails before any weight is copied,
    not after a download of the whole model. Anything else wrong with config.json is left to
    the load, which says what."""
    from ember.models.quant import read_quantization

    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
        if isinstance(raw, dict):
            read_quantization(raw)
    except (OSError, ValueError):
        return


class _State:
    """The staging folder's record of its source, its finished files and the sizes its .part
    files are headed for, so that a pull that was interrupted skips the first and continues the
    second. A folder left by a pull from elsewhere is discarded, as is a .part of a file whose
    size has changed at the source since."""

    def __init__(
        self, path: Path, uri: str, files: dict[str, dict[str, Any]], parts: dict[str, int]
    ) -> None:
        self.path = path
        self.uri = uri
        self.files = files
        self.parts = parts

    @classmethod
    def open(cls, staging: Path, uri: str) -> _State:
        path = staging / STATE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data["source"] == uri and isinstance(data["files"], dict):
                return cls(path, uri, data["files"], dict(data["parts"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        state = cls(path, uri, {}, {})
        state.save()
        return state

    def starting(self, name: str, size: int) -> bool:
        """Record that NAME.part is headed for `size` bytes; False if an earlier pull's part
        was headed for another size (it is then no prefix of this file)."""
        previous = self.parts.get(name)
        if previous != size:
            self.parts[name] = size
            self.save()
        return previous in (None, size)

    def reusable(self, name: str, size: int, digest: Digest | None, staged: int | None) -> str:
        """The sha256 of NAME as an earlier pull finished it, if that copy is still the file at
        the source: same size, and the source's digest (where it gives one) is the recorded
        sha256. A digest file is never reused: the digests it gives may have changed. "" when
        the file must be fetched again (its record is then dropped)."""
        done = self.files.get(name)
        if done is None:
            return ""
        sha = str(done.get("sha256", ""))
        if (
            not is_digest_file(name)
            and done.get("size") == size == staged
            and (digest is None or digest.sha256 == sha)
        ):
            return sha
        del self.files[name]
        self.save()
        return ""

    def finished(self, name: str, size: int, sha256: str) -> None:
        self.files[name] = {"size": size, "sha256": sha256}
        self.parts.pop(name, None)
        self.save()

    def save(self) -> None:
        _write_json(self.path, {"source": self.uri, "files": self.files, "parts": self.parts})


def _pull_file(
    source: Source,
    staging: Path,
    name: str,
    size: int,
    digest: Digest | None,
    state: _State,
    progress: FileProgress | None,
    chunk_bytes: int,
) -> PulledFile:
    report = progress or (lambda _n, _d, _t: None)
    dest = staging / name
    sha = state.reusable(name, size, digest, _size(dest))
    if sha:
        report(name, size, size)
        return PulledFile(name, size, sha, digest.origin if digest else None, size)
    dest.unlink(missing_ok=True)
    part = staging / (name + PART)
    part.parent.mkdir(parents=True, exist_ok=True)
    have = _size(part) or 0
    if not state.starting(name, size) or have > size:  # not a prefix of this file: start over
        part.unlink(missing_ok=True)
        have = 0
    hasher = _hash_prefix(part, have)
    resumed_at = have
    report(name, have, size)
    with part.open("ab") as out:
        for data in _read_ranges(source, name, have, size, chunk_bytes):
            out.write(data)
            hasher.update(data)
            have += len(data)
            report(name, have, size)
        out.flush()
        os.fsync(out.fileno())
    sha = hasher.hexdigest()
    _check(source, name, sha, digest, part)
    os.replace(part, dest)
    state.finished(name, size, sha)
    return PulledFile(name, size, sha, digest.origin if digest else None, resumed_at)


def _check(source: Source, name: str, sha: str, digest: Digest | None, part: Path) -> None:
    """`sha` is that of bytes just fetched whole (never of an earlier pull's copy)."""
    if digest is None or digest.sha256 == sha:
        return
    part.unlink(missing_ok=True)  # the next pull fetches the file whole
    raise ModelLoadError(
        f"'{source.location(name)}' arrived with sha256 {sha}, but {digest.origin} says "
        f"{digest.sha256}; the copy was corrupted in transit, the file changed at the source "
        f"during the pull, or {digest.origin} is out of date. The next pull fetches the file "
        "whole again; if it fails the same way, the digest file at the source needs fixing"
    )


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _hash_prefix(path: Path, length: int) -> Any:
    hasher = hashlib.sha256()
    if length:
        with path.open("rb") as f:
            while chunk := f.read(min(CHUNK_BYTES, length)):
                hasher.update(chunk)
                length -= len(chunk)
    return hasher


def _read_ranges(source: Source, name: str, start: int, end: int, chunk: int) -> Iterator[bytes]:
    """The file's bytes from `start` to `end` in order. A range that times out (a link too slow
    for `chunk` bytes per request) is asked for again in smaller ranges, from the end of the
    bytes already written, until ranges reach MIN_CHUNK_BYTES or two tries in a row bring
    nothing; every finished range before it is kept, so a later pull continues from there."""
    fruitless = 0
    while True:
        before = start
        try:
            for data in _read_ranges_once(source, name, start, end, chunk):
                start += len(data)
                yield data
            return
        except ReadTimeoutError:
            fruitless = 0 if start > before else fruitless + 1
            if chunk <= MIN_CHUNK_BYTES or fruitless >= 2:
                raise
            chunk = max(MIN_CHUNK_BYTES, chunk // SHRINK)


def _read_ranges_once(
    source: Source, name: str, start: int, end: int, chunk: int
) -> Iterator[bytes]:
    """The file's bytes from `start` to `end` in order, READ_AHEAD range reads in flight."""

    def read(offset: int) -> bytes:
        buf = bytearray(min(chunk, end - offset))
        got = source.read_into(name, offset, memoryview(buf))
        if got != len(buf):
            raise ModelLoadError(
                f"'{source.location(name)}' ended at byte {offset + got} of the {end} it "
                "announced; it changed during the pull or the connection broke. Run the pull "
                "again to continue"
            )
        return bytes(buf)

    offsets = iter(range(start, end, chunk))
    pending: deque[Future[bytes]] = deque()
    pool = ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="ember-pull")
    try:
        for offset in offsets:
            pending.append(pool.submit(read, offset))
            if len(pending) == READ_AHEAD:
                break
        while pending:
            data = pending.popleft().result()
            offset_next = next(offsets, None)
            if offset_next is not None:
                pending.append(pool.submit(read, offset_next))
            yield data
    finally:
        # Reads still in flight after a failure are not waited for: their bytes are unused.
        pool.shutdown(wait=False, cancel_futures=True)


def _install(staging: Path, target: Path) -> None:
    """Rename the finished folder into place, replacing an older copy of the model."""
    if not target.exists():
        os.rename(staging, target)
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def pull_command(source_uri: str, name: str | None, store: ModelStore) -> int:
    """`ember pull`: progress on stderr, a summary on stdout; 1 with a message on failure."""
    from ember.registry.progress import FileBars

    bars = FileBars()
    print(f"pulling {source_uri}", file=sys.stderr)
    try:
        result = pull(source_uri, store, name, progress=bars)
    except EmberError as e:
        bars.close()
        print(f"Error: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        bars.close()
        print("interrupted; run the same 'ember pull' again to continue", file=sys.stderr)
        return 130
    record = result.model.path / RECORD
    verified = [f for f in result.files if f.verified_by]
    unverified = [f for f in result.files if not f.verified_by and not is_digest_file(f.name)]
    if verified:
        print(f"verified sha256 of {len(verified)} file(s) against the source's digests")
    if unverified:
        print(
            f"the source offers no sha256 for {len(unverified)} file(s); their computed sha256 "
            f"is recorded in {record}"
        )
    size = sum(f.size for f in result.files)
    print(f"pulled {result.model.name} ({size / 1e9:.2f} GB) into {result.model.path}")
    return 0
