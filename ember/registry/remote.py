"""Models named by URI (s3://, gs://, http(s)://, hf://, file://): their small files (config,
tokenizer, chat template) are fetched into the cache directory, where the tokenizer and config
readers find them; their weights stay where they are and the loader streams them.

The small files land in the same folder that the loader's write-through cache fills
(`cache_dir/<scheme>/<bucket or host or repo>/<path>/`, see ember/loader/cache.py): once a load
has written the weights there too, the next start reads everything locally.
"""

from __future__ import annotations

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ember.errors import ModelLoadError
from ember.registry.names import DEFAULT_TAG

if TYPE_CHECKING:
    from ember.loader import Source

REMOTE_SCHEMES = ("s3", "gs", "http", "https", "hf")
# Checkpoint formats ember does not load: never fetched as "small files", whatever their size.
FOREIGN_WEIGHTS = (".bin", ".pth", ".pt", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".ot")
# The small files fetched from a source that cannot list (plain HTTP, the Hub).
PROBED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "params.json",  # ember's default options (Ollama's PARAMETER lines)
    "system",  # ember's default system prompt
)
SMALL_FILE_BYTES = 64 * 1024 * 1024
_FETCH_THREADS = 8


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """Where one model is read from: config and tokenizer files from `config_dir` on this
    machine, weights from `weights` (the same folder, or the URI to stream them from)."""

    config_dir: Path
    weights: str

    @property
    def remote(self) -> bool:
        return self.weights != str(self.config_dir)


def scheme(model: str) -> str | None:
    head, sep, _ = model.partition("://")
    return head.lower() if sep else None


def is_uri(model: str) -> bool:
    """A URI the loader reads (file:// included); anything else is a path or a store name."""
    return scheme(model) in (*REMOTE_SCHEMES, "file")


def is_path(model: str) -> bool:
    """A folder on this machine, as a model reference: /abs, ./rel, ../rel or ~/..."""
    return model.startswith((".", "/", "~"))


def is_location(model: str) -> bool:
    """A folder or a URI rather than a model name in the store."""
    text = model.strip()
    return is_uri(text) or is_path(text)


def default_cache_dir() -> Path:
    from ember.registry.store import default_home

    return default_home() / "cache"


def default_name(uri: str) -> str:
    """The model name a URI is known by: its last path component, tagged latest
    (s3://bucket/llama-3.1-8b -> llama-3.1-8b:latest; hf://org/name@rev -> name:latest), with
    what a name cannot hold made '-' (http://127.0.0.1:8000/ -> 127.0.0.1-8000:latest)."""
    scheme, _, rest = uri.partition("://") if "://" in uri else ("", "", uri)
    rest = rest.split("?", 1)[0]
    if scheme == "hf":  # the revision may hold '/': refs/pr/1
        rest = rest.partition("@")[0]
    last = PurePosixPath(rest.rstrip("/")).name or rest
    name = re.sub(r"[^a-z0-9._-]+", "-", last.partition("@")[0].lower())
    name = name.lstrip("._-")[:80].rstrip("-") or "model"
    return f"{name}:{DEFAULT_TAG}"


_memo: dict[tuple[str, Path], ModelFiles] = {}
_memo_lock = threading.Lock()


def model_files(uri: str, cache_dir: Path | None = None) -> ModelFiles:
    """The local folder holding `uri`'s config and tokenizer files, fetching them into
    `cache_dir` (default $EMBER_HOME/cache) unless the model is already on this machine (a
    file:// path, a complete Hugging Face cache snapshot, a complete write-through copy).

    Remembered per process, so that the tokenizer and the engine core resolve once. Raises
    ModelLoadError naming the source and what to fix.
    """
    cache = (cache_dir or default_cache_dir()).expanduser()
    key = (uri, cache)
    with _memo_lock:
        known = _memo.get(key)
    if known is not None and (known.config_dir / "config.json").is_file():
        return known
    files = _resolve(uri, cache)
    with _memo_lock:
        _memo[key] = files
    return files


def _resolve(uri: str, cache_dir: Path) -> ModelFiles:
    from ember.loader import resolve_source
    from ember.loader.cache import CachingSource, cache_path

    source = resolve_source(uri, cache_dir)
    try:
        local = source.local_dir()
        if local is not None:
            return ModelFiles(local, str(local))
        remote = source.remote if isinstance(source, CachingSource) else source
        root = cache_path(cache_dir, source.uri)
        fetched = fetch_small_files(remote, root)
    finally:
        source.close()
    for name in ("config.json", "tokenizer.json"):
        if name not in fetched:
            raise ModelLoadError(
                f"no {name} in '{uri}'; ember needs the Hugging Face config.json and the 'fast' "
                "tokenizer.json next to the *.safetensors weights (transformers' save_pretrained "
                "writes both)"
            )
    return ModelFiles(root, uri)


def small_file_names(source: Source) -> list[str] | None:
    """The config, tokenizer and template files of a source that can list its files, or None
    where it cannot (callers then probe PROBED_FILES)."""
    listing = source.list_files()
    if listing is None:
        return None
    return [n for n in listing if is_small_file(n) and source.size(n) <= SMALL_FILE_BYTES]


def is_small_file(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return not any(p.startswith(".") for p in parts) and not name.endswith(
        (".safetensors", ".partial", ".part", *FOREIGN_WEIGHTS)
    )


def fetch_small_files(source: Source, root: Path) -> set[str]:
    """Copy the source's small files into `root` (each written whole, then renamed into place);
    returns the names copied."""
    from ember.loader.source import MissingFileError

    names = small_file_names(source)
    candidates = list(PROBED_FILES) if names is None else names

    def fetch(name: str) -> str | None:
        try:
            data = source.read_file(name)
        except MissingFileError:
            return None
        write_atomic(root / name, data)
        return name

    if not candidates:
        return set()
    with ThreadPoolExecutor(min(_FETCH_THREADS, len(candidates))) as pool:
        return {n for n in pool.map(fetch, candidates) if n is not None}


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ModelLoadError(
            f"cannot write {path}: {exc}; check that the cache is writable"
        ) from exc
