"""The local model store: `$EMBER_HOME/models/[namespace/]model/tag/`, one Hugging Face-style
folder per model (config.json, *.safetensors, tokenizer files), plus optional `params.json`
(Ollama-style default options) and `system` (default system prompt) files."""

from __future__ import annotations

import builtins
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from ember.errors import InvalidRequestError, ModelLoadError, ModelNotFoundError
from ember.registry.details import ModelDetails, inspect_dir
from ember.registry.names import DEFAULT_TAG, ModelName, parse_name
from ember.registry.remote import default_name, is_uri, model_files
from ember.registry.tiny import TINY_NAME, ensure_tiny

# The file whose presence makes a folder a model, so a pull must write it last (or rename the
# finished folder into place, as tiny.py does).
MODEL_MARKER = "config.json"


def default_home() -> Path:
    """`$EMBER_HOME`, else ~/.ember."""
    return Path(os.environ.get("EMBER_HOME") or "~/.ember").expanduser()


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


def _is_explicit_path(text: str) -> bool:
    return os.path.isabs(text) or text.startswith((".", "~"))


def _copy_file(src: str, dst: str) -> None:
    # Weights are never edited in place, so a copy can share them; small files that users edit
    # (params.json, system) are real copies.
    if src.endswith(".safetensors"):
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


class ModelStore:
    def __init__(self, home: Path) -> None:
        self.home = Path(home).expanduser()
        self.models_dir = self.home / "models"

    @property
    def cache_dir(self) -> Path:
        """Remote models' local files: fetched config and tokenizer files, written-through
        weights (see ember/loader/cache.py)."""
        return self.home / "cache"

    def path_for(self, name: str) -> Path:
        """The folder where the model `name` lives (or will live once pulled)."""
        return self.models_dir / parse_name(name).relpath

    def _load(self, name: str, path: Path) -> LocalModel:
        info = inspect_dir(path)
        return LocalModel(
            name=name,
            path=path,
            size=info.size,
            modified_at=info.modified_at,
            digest=info.digest,
            details=info.details,
        )

    def _from_dir(self, text: str) -> LocalModel:
        path = Path(text).expanduser().resolve()
        if not path.is_dir():
            raise ModelNotFoundError(
                f"model directory '{text}' not found; pass an existing folder with config.json "
                "and tokenizer.json, or a model name from 'ember list'",
                param="model",
            )
        return self._load(f"{path.name}:{DEFAULT_TAG}", path)

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
            if Path(text).is_dir():
                return self._from_dir(text)
            raise
        path = self._find(name)
        if path is not None:
            return self._load(str(name), path)
        if Path(text).is_dir():
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
        """Delete a model from the store (`ember rm`)."""
        parsed = parse_name(name)
        path = self.models_dir / parsed.relpath
        if not path.is_dir():
            raise ModelNotFoundError(f"model '{name}' not found; see 'ember list'", param="model")
        shutil.rmtree(path)
        # Drop the model's (and namespace's) folders once their last tag is gone.
        for parent in path.parents:
            if parent == self.models_dir or any(parent.iterdir()):
                break
            parent.rmdir()

    def copy(self, source: str, destination: str) -> LocalModel:
        """Copy a model under a new name (`ember cp`); the destination is replaced if present."""
        src = self.resolve(source)
        dst_name = parse_name(destination)
        dst = self.models_dir / dst_name.relpath
        if dst == src.path:
            return src
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.parent / f".{dst.name}.copy-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src.path, tmp, copy_function=_copy_file)
        shutil.rmtree(dst, ignore_errors=True)
        os.rename(tmp, dst)
        return self._load(str(dst_name), dst)
