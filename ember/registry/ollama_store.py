"""Models from an existing Ollama store, so that `ember serve gemma2:9b` works where
`ollama pull gemma2:9b` was run.

Ollama's layout under OLLAMA_MODELS (default ~/.ollama/models):
- manifests/registry.ollama.ai/<namespace, "library" by default>/<model>/<tag>: a Docker-style
  JSON manifest whose layers name blobs by digest and media type (…ollama.image.model is the
  GGUF file; …template, …params, …system, …license the rest);
- blobs/sha256-<hex>: the bytes.
The GGUF is turned into a model folder once, under ember's cache keyed by the blob's digest
(ember/loader/gguf_convert.py); Ollama's params go to params.json and its system prompt to
`system`, as in ember's own model folders. The chat template is the GGUF's own (Jinja, from
tokenizer.chat_template); Ollama's Go template is kept beside it as `ollama_template` for
reference but not run.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ember.errors import ModelLoadError
from ember.registry.names import ModelName

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

REGISTRY = "registry.ollama.ai"
_MEDIA = "application/vnd.ollama.image."


def ollama_models_dir() -> Path:
    """OLLAMA_MODELS, else ~/.ollama/models."""
    return Path(os.environ.get("OLLAMA_MODELS") or "~/.ollama/models").expanduser()


@dataclass(frozen=True, slots=True)
class OllamaModel:
    name: str  # "gemma2:9b", "user/model:tag"
    manifest: Path
    gguf: Path  # the model blob
    digest: str  # the model blob's "sha256:<hex>"
    size: int  # bytes of all layers
    template: str | None = None  # Ollama's Go template text
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


def find_ollama_model(name: ModelName, root: Path | None = None) -> OllamaModel | None:
    """The model of that name in the Ollama store at root (default ollama_models_dir()), or
    None when the store has no manifest for it."""
    root = ollama_models_dir() if root is None else root
    namespace = name.namespace or "library"
    manifest = root / "manifests" / REGISTRY / namespace / name.model / name.tag
    if not manifest.is_file():
        return None
    shown = str(name) if name.namespace else f"{name.model}:{name.tag}"
    return _read(shown, manifest, root / "blobs")


def list_ollama_models(root: Path | None = None) -> list[OllamaModel]:
    """Every model in the Ollama store that has a GGUF layer, by name."""
    root = ollama_models_dir() if root is None else root
    base = root / "manifests" / REGISTRY
    found: list[OllamaModel] = []
    if not base.is_dir():
        return found
    for manifest in sorted(p for p in base.glob("*/*/*") if p.is_file()):
        namespace, model, tag = manifest.parts[-3:]
        shown = f"{model}:{tag}" if namespace == "library" else f"{namespace}/{model}:{tag}"
        try:
            found.append(_read(shown, manifest, root / "blobs"))
        except _NoModelLayer:
            continue  # not a text model (an embedding projector, ...): not servable
        except ModelLoadError as e:
            log.warning("%s (not listed)", e.message)
    return found


class _NoModelLayer(ModelLoadError):
    """A manifest with no GGUF model blob."""


def _read(name: str, manifest: Path, blobs: Path) -> OllamaModel:
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8"))["layers"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"cannot read Ollama manifest '{manifest}': {exc}") from exc
    by_type: dict[str, Path] = {}
    digests: dict[str, str] = {}
    size = 0
    for layer in layers:
        kind = str(layer.get("mediaType", "")).removeprefix(_MEDIA)
        digest = str(layer.get("digest", ""))
        by_type[kind] = blobs / digest.replace(":", "-")
        digests[kind] = digest
        size += int(layer.get("size", 0))
    gguf = by_type.get("model")
    if gguf is None or not gguf.is_file():
        raise _NoModelLayer(
            f"Ollama model '{name}' has no model blob in {blobs}; run 'ollama pull {name}' again"
        )
    params: dict[str, Any] = {}
    if "params" in by_type:
        try:
            loaded = json.loads(_text(by_type["params"]) or "{}")
        except ValueError as exc:
            raise ModelLoadError(
                f"Ollama model '{name}' is damaged: its params layer {by_type['params']} is not "
                f"JSON ({exc}); run 'ollama pull {name}' again"
            ) from exc
        params = loaded if isinstance(loaded, dict) else {}
    return OllamaModel(
        name=name,
        manifest=manifest,
        gguf=gguf,
        digest=digests["model"],
        size=size,
        template=_text(by_type.get("template")),
        system=_text(by_type.get("system")),
        params=params,
    )


def _text(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    return path.read_text(encoding="utf-8")


def model_folder(model: OllamaModel, cache_dir: Path, dtype: torch.dtype | None = None) -> Path:
    """The model folder for an Ollama model, written under cache_dir/ollama the first time
    (weights in `dtype`, default bfloat16)."""
    import torch

    from ember.loader.gguf_convert import write_model_dir

    folder = cache_dir / "ollama" / model.digest.replace(":", "-")
    if not (folder / "config.json").is_file():
        write_model_dir(model.gguf, folder, dtype or torch.bfloat16)
    if model.params:
        (folder / "params.json").write_text(json.dumps(model.params, indent=2), encoding="utf-8")
    if model.system is not None:
        (folder / "system").write_text(model.system, encoding="utf-8")
    if model.template is not None:
        (folder / "ollama_template").write_text(model.template, encoding="utf-8")
    return folder


def resolve_ollama(name: ModelName, cache_dir: Path) -> Path | None:
    """The hook for ModelStore.resolve: the model folder of `name` from the Ollama store, or
    None when Ollama does not have it."""
    model = find_ollama_model(name)
    return None if model is None else model_folder(model, cache_dir)
