"""The local model store under `$EMBER_HOME` (or `$EMBER_MODELS`):

- `manifests/[namespace/]model/tag`: each file of a model by sha256 (manifests.py);
- `blobs/sha256-<hex>`: the bytes, stored once however many models hold them (blobs.py);
- `models/[namespace/]model/tag/`: the Hugging Face-style folder the engine loads (config.json,
  *.safetensors as hard links to blobs, tokenizer files), plus optional `params.json`
  (Ollama-style default options) and `system` (default system prompt) files.

Folders written before manifests existed (or by hand) are listed and served as they are, and
given a manifest the first time a copy or create needs their blobs (`adopt`)."""

from __future__ import annotations

import builtins
import fcntl
import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ember.errors import (
    ConflictError,
    InvalidRequestError,
    ModelLoadError,
    ModelNotFoundError,
)
from ember.registry.assemble import import_dir, materialise
from ember.registry.blobs import Blobs
from ember.registry.details import ModelDetails, inspect_dir
from ember.registry.manifests import Manifest, read_manifest, write_manifest
from ember.registry.names import DEFAULT_TAG, ModelName, parse_name
from ember.registry.ollama_store import find_ollama_model, resolve_ollama
from ember.registry.remote import default_name, is_uri, model_files
from ember.registry.tiny import TINY_NAME, ensure_tiny

# The file whose presence makes a folder a model, so a pull must write it last (or rename the
# finished folder into place, as tiny.py does).
MODEL_MARKER = "config.json"


def default_home() -> Path:
    """`$EMBER_HOME`, else ~/.ember."""
    return Path(os.environ.get("EMBER_HOME") or "~/.ember").expanduser()


# Store writes (copy, create, remove, adopt) within one process run one at a time; each is also
# crash-safe on its own (rename into place), which is what matters across processes.
_WRITE_LOCK = threading.RLock()


@dataclass(frozen=True, slots=True)
class LocalModel:
    name: str  # "tiny:latest", "qwen/qwen2.5:0.5b"; for a directory, its basename + ":latest"
    path: Path
    size: int  # bytes
    modified_at: datetime  # UTC
    digest: str  # sha256 hex over file names, sizes and mtimes
    details: ModelDetails
    # For a model named by URI: where its weights stream from (`path` then holds only its
    # config and tokenizer files); None when `path` holds the weights too.
    source: str | None = None


def expected_name(name_or_path: str) -> str | None:
    """The name `ModelStore.resolve` will give `name_or_path`, where that is known without
    reading the store or fetching anything: a URI's, a folder path's, a store name's (a bare
    name that turns out to be a folder is named after the folder instead). None for text that
    is no model name."""
    text = name_or_path.strip()
    if is_uri(text):
        return default_name(text)
    if _is_explicit_path(text):
        return _folder_name(Path(text).expanduser().resolve())
    try:
        return str(parse_name(text))
    except InvalidRequestError:
        return None


def _folder_name(path: Path) -> str:
    """The name a model folder outside the store is served as: its own name, tagged latest."""
    return f"{path.name}:{DEFAULT_TAG}"


def _is_explicit_path(text: str) -> bool:
    return os.path.isabs(text) or text.startswith((".", "~"))


class ModelStore:
    def __init__(self, home: Path, models: Path | None = None) -> None:
        """`models`: where manifests, blobs and model folders live (EMBER_MODELS); default
        `home`. Caches stay under `home`. Never an Ollama store: remove() deletes the removed
        model's blobs that no manifest here names."""
        self.home = Path(home).expanduser()
        root = Path(models).expanduser() if models is not None else self.home
        self.models_dir = root / "models"
        self.manifests_dir = root / "manifests"
        self.blobs = Blobs(root / "blobs")

    @property
    def cache_dir(self) -> Path:
        """Remote models' local files: fetched config and tokenizer files, written-through
        weights (see ember/loader/cache.py)."""
        return self.home / "cache"

    def path_for(self, name: str) -> Path:
        """The folder where the model `name` lives (or will live once pulled)."""
        return self.models_dir / parse_name(name).relpath

    def staging_path(self, name: str) -> Path:
        """Where a pull of `name` collects its files (hidden, so that it is never listed)."""
        target = self.path_for(name)
        return target.parent / f".{target.name}.pull"

    def pull_lock_path(self, name: str) -> Path:
        """The file a pull of `name` holds locked while it runs (outside the model's folder,
        and never deleted: a pull that locked a file someone removed would lock nothing)."""
        return self.models_dir.parent / ".pull-locks" / f"{parse_name(name).relpath}.lock"

    @contextmanager
    def pull_lock(self, name: str, doing: str) -> Iterator[None]:
        """Hold `name`'s pull lock (the kernel's flock, released however the holder ends), or
        raise ConflictError (409) at once if a running `ember pull` of it holds it; `doing`
        says what the caller was about to do, for the message."""
        path = self.pull_lock_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConflictError(
                    f"an 'ember pull' of {parse_name(name)} is running (it holds {path}); wait "
                    f"for it to finish, or stop it, before {doing}"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def manifest_path(self, name: str) -> Path:
        return self.manifests_dir / parse_name(name).relpath

    def manifest(self, name: str) -> Manifest | None:
        """The model's manifest; None for a model folder that has none yet."""
        return read_manifest(self.manifest_path(name))

    def _load(self, name: str, path: Path) -> LocalModel:
        info = inspect_dir(path)
        model = LocalModel(
            name=name,
            path=path,
            size=info.size,
            modified_at=info.modified_at,
            digest=info.digest,
            details=info.details,
        )
        if path != self.models_dir / parse_name(name).relpath:
            return model  # a folder outside the store
        file = self.manifest_path(name)
        manifest = read_manifest(file)
        if manifest is None:
            return model
        modified = datetime.fromtimestamp(file.stat().st_mtime, tz=timezone.utc)
        details = replace(info.details, parent_model=manifest.parent)
        return replace(
            model, size=manifest.size, digest=manifest.digest, modified_at=modified, details=details
        )

    def _from_dir(self, text: str) -> LocalModel:
        path = Path(text).expanduser().resolve()
        if not _is_dir(path):
            raise ModelNotFoundError(
                f"model directory '{text}' not found; pass an existing folder with config.json "
                "and tokenizer.json, or a model name from 'ember list'",
                param="model",
            )
        # Before anything walks the folder: `ember run /tmp` must not read all of /tmp.
        if not (path / MODEL_MARKER).is_file() and not any(path.glob("*.gguf")):
            raise ModelNotFoundError(
                f"'{text}' is not a model folder: it has no {MODEL_MARKER}; pass a folder with a "
                "Hugging Face checkpoint (config.json, tokenizer.json, *.safetensors) or a model "
                "name from 'ember list'",
                param="model",
            )
        return self._load(_folder_name(path), path)

    def _from_uri(self, uri: str) -> LocalModel:
        files = model_files(uri, self.cache_dir)
        model = self._load(default_name(uri), files.config_dir)
        if not files.remote:
            return model
        # The weights are elsewhere: the folder holds no safetensors to inspect.
        details = replace(model.details, format="safetensors")
        return replace(model, details=details, source=files.weights)

    def _find(self, name: ModelName) -> Path | None:
        path = self.models_dir / name.relpath
        if (path / MODEL_MARKER).is_file():
            return path
        manifest = self.manifest(str(name))
        if manifest is not None:  # its folder was removed: build it again from the blobs
            with _WRITE_LOCK:
                materialise(self.blobs, manifest, path)
            return path
        if name == TINY_NAME:
            return ensure_tiny(self.models_dir)
        if path.is_dir():
            raise ModelLoadError(
                f"model '{name}' in {path} is incomplete (no {MODEL_MARKER}); "
                f"run 'ember pull {name}' again or 'ember rm {name}'"
            )
        return None

    def resolve(self, name_or_path: str) -> LocalModel:
        """A model by store name (`tiny`, `llama3.2:1b`), by directory path, or by URI (s3://,
        gs://, http(s)://, hf://, file://: its config and tokenizer files are fetched into the
        cache now, see remote.py). A store name wins over a relative folder of the same name;
        `./name` always means the folder."""
        text = name_or_path.strip()
        if is_uri(text):
            return self._from_uri(text)
        if _is_explicit_path(text):
            return self._from_dir(text)
        try:
            name = parse_name(text)
        except InvalidRequestError:
            if _is_dir(Path(text)):
                return self._from_dir(text)
            raise
        path = self._find(name)
        if path is not None:
            return self._load(str(name), path)
        path = resolve_ollama(name, self.cache_dir)  # pulled by Ollama: see ollama_store.py
        if path is not None:
            return self._load(str(name), path)
        if _is_dir(Path(text)):
            return self._from_dir(text)
        raise ModelNotFoundError(
            f"model '{text}' not found; run 'ember pull {text}' or 'ember list'", param="model"
        )

    def _model_dirs(self) -> Iterator[tuple[str, Path]]:
        """("model:tag" or "namespace/model:tag", folder) for each folder holding a model."""
        if not self.models_dir.is_dir():
            return
        for first in sorted(self.models_dir.iterdir()):
            if not first.is_dir() or first.name.startswith("."):
                continue
            for second in sorted(first.iterdir()):
                if not second.is_dir() or second.name.startswith("."):
                    continue
                if (second / MODEL_MARKER).is_file():
                    yield f"{first.name}:{second.name}", second
                    continue
                for third in sorted(second.iterdir()):
                    if not third.name.startswith(".") and (third / MODEL_MARKER).is_file():
                        yield f"{first.name}/{second.name}:{third.name}", third

    def list(self) -> builtins.list[LocalModel]:
        """Models in the store, newest first. Does not create `tiny`."""
        models = []
        for text, path in self._model_dirs():
            try:
                name = parse_name(text)
            except InvalidRequestError:
                continue  # a folder put there by hand, not reachable by name
            if self.models_dir / name.relpath == path:
                models.append(self._load(str(name), path))
        return sorted(models, key=lambda m: (-m.modified_at.timestamp(), m.name))

    def params(self, model: LocalModel) -> dict[str, Any]:
        """Default options from params.json ({} if absent), e.g. {"num_predict": 128}."""
        file = model.path / "params.json"
        if not file.is_file():
            return {}
        try:
            params = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {file}: {exc}; fix or delete it") from exc
        if not isinstance(params, dict):
            raise ModelLoadError(f"{file} must hold a JSON object of options; fix or delete it")
        return params

    def system(self, model: LocalModel) -> str | None:
        """The default system prompt from the `system` file, if any."""
        file = model.path / "system"
        return file.read_text(encoding="utf-8") if file.is_file() else None

    def remove(self, name: str) -> None:
        """Delete a model from the store (`ember rm`), and those of its blobs no other model
        holds. Blobs no manifest names that were not this model's (uploads for a create yet to
        come) stay, as in Ollama."""
        parsed = parse_name(name)
        path = self.models_dir / parsed.relpath
        manifest = self.manifest_path(str(parsed))
        staging = self.staging_path(str(parsed))  # an unfinished pull's files go too
        if not path.is_dir() and not manifest.is_file() and not staging.is_dir():
            if find_ollama_model(parsed) is not None:
                raise ModelNotFoundError(
                    f"model '{name}' is in Ollama's store, which is read-only for ember; remove "
                    f"it with 'ollama rm {name}'",
                    param="model",
                )
            raise ModelNotFoundError(f"model '{name}' not found; see 'ember list'", param="model")
        with self.pull_lock(str(parsed), "removing it"), _WRITE_LOCK:
            own = _readable_manifest(manifest)
            manifest.unlink(missing_ok=True)  # first: from here on the model is gone
            shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)
            for root, leaf in ((self.models_dir, path), (self.manifests_dir, manifest)):
                _prune_empty_parents(root, leaf)
            if own is not None:
                self.blobs.discard({f.sha256 for f in own.files} - self._referenced())

    def _referenced(self) -> set[str]:
        """sha256 of every blob some manifest names."""
        out: set[str] = set()
        if self.manifests_dir.is_dir():
            for file in self.manifests_dir.rglob("*"):
                if file.is_file() and not file.name.startswith("."):
                    manifest = read_manifest(file)
                    if manifest is not None:
                        out.update(f.sha256 for f in manifest.files)
        return out

    def adopt(self, name: str, known: dict[str, str] | None = None) -> Manifest:
        """The manifest of the stored model `name`, first storing its folder's files as blobs
        and writing one if it has none (a folder from before manifests, or a fresh pull whose
        sha256s are `known`)."""
        parsed = parse_name(name)
        with _WRITE_LOCK:
            manifest = self.manifest(str(parsed))
            if manifest is not None and known is None:
                return manifest
            path = self.path_for(str(parsed))
            if not (path / MODEL_MARKER).is_file():
                self.resolve(str(parsed))  # raises the right error; creates tiny
            if known is not None:  # a fresh pull: no one has seen an ID yet
                manifest = import_dir(self.blobs, path, known)
                write_manifest(self.manifest_path(str(parsed)), manifest)
                return manifest
            # A folder clients already list: keep its ID and modified time (copy from it, or
            # create on it, must not look like a change to the model).
            before = inspect_dir(path)
            manifest = replace(import_dir(self.blobs, path), id=before.digest)
            file = self.manifest_path(str(parsed))
            write_manifest(file, manifest)
            stamp = before.modified_at.timestamp()
            os.utime(file, (stamp, stamp))
            return manifest

    def manifest_of(self, source: str) -> Manifest:
        """A manifest for `source`: a stored model (adopted if needed) or a model folder, whose
        files are then stored as blobs (copied; the folder is left as it is)."""
        local = self.resolve(source)
        if local.source is not None:
            raise InvalidRequestError(
                f"'{source}' streams its weights from {local.source}; run 'ember pull {source}' "
                "first, then copy the pulled model",
                param="source",
            )
        if local.path == self.path_for(local.name) and self.models_dir in local.path.parents:
            return self.adopt(local.name)
        with _WRITE_LOCK:
            return import_dir(self.blobs, local.path, parent=local.name, own=False)

    def install(self, name: str, manifest: Manifest) -> LocalModel:
        """Put `manifest` in the store as `name`: its folder first, then its manifest."""
        parsed = parse_name(name)
        with _WRITE_LOCK:
            materialise(self.blobs, manifest, self.models_dir / parsed.relpath)
            write_manifest(self.manifest_path(str(parsed)), manifest)
        return self._load(str(parsed), self.models_dir / parsed.relpath)

    def copy(self, source: str, destination: str) -> LocalModel:
        """Copy a model under a new name (`ember cp`), sharing its blobs; the destination is
        replaced if present."""
        src = self.manifest_of(source)
        dst = str(parse_name(destination))
        if _parent_name(source) == dst:
            return self.resolve(dst)
        return self.install(dst, Manifest(src.files, parent=_parent_name(source), id=src.id))


def _parent_name(source: str) -> str:
    try:
        return str(parse_name(source))
    except InvalidRequestError:
        return source


def _readable_manifest(file: Path) -> Manifest | None:
    """The manifest at `file`; None if absent or damaged (its blobs are then left alone)."""
    try:
        return read_manifest(file)
    except ModelLoadError:
        return None


def _prune_empty_parents(root: Path, leaf: Path) -> None:
    """Drop the folders above `leaf` (a model's, its namespace's) once they are empty."""
    for parent in leaf.parents:
        if parent == root or not parent.is_dir() or any(parent.iterdir()):
            break
        parent.rmdir()


def _is_dir(path: Path) -> bool:
    """Path.is_dir, False where the text cannot be a path here (too long a name: a client's
    model field of thousands of characters is a bad name, not a server error)."""
    try:
        return path.is_dir()
    except OSError:
        return False
