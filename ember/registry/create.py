"""`ember create` and Ollama's /api/create: a new model from another model or a model folder
(`from`), and/or from uploaded blobs (`files`: file name -> digest), with its own chat template,
system prompt and default parameters. The new model shares every unchanged blob with its base."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ember.errors import InvalidRequestError, ModelNotFoundError
from ember.registry.blobs import parse_digest
from ember.registry.manifests import Manifest
from ember.registry.remote import is_path
from ember.registry.store import MODEL_MARKER, LocalModel, ModelStore

TEMPLATE_FILE = "chat_template.jinja"  # the tokenizer prefers it over tokenizer_config.json's
SYSTEM_FILE = "system"
PARAMS_FILE = "params.json"


@dataclass(frozen=True, slots=True)
class CreateSpec:
    base: str | None = None  # a model name, a model folder, or None (files only)
    files: dict[str, str] = field(default_factory=dict)  # file name -> "sha256:<hex>"
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None


def create(
    store: ModelStore,
    name: str,
    spec: CreateSpec,
    status: Callable[[str], None] | None = None,
) -> LocalModel:
    report = status or (lambda _s: None)
    manifest = Manifest(())
    parent = ""
    if spec.base:
        report(f"using model {spec.base}")
        manifest = store.manifest_of(spec.base)
        parent = manifest.parent if is_path(spec.base) else spec.base
    for file_name, digest in spec.files.items():
        sha = parse_digest(digest)
        if not store.blobs.has(sha):
            raise ModelNotFoundError(
                f"blob sha256:{sha} for '{file_name}' not found; upload it first with "
                "POST /api/blobs/sha256:<digest>",
                param="files",
            )
        if file_name.startswith(("/", ".")) or ".." in file_name.split("/"):
            raise InvalidRequestError(f"invalid file name {file_name!r}", param="files")
        size = store.blobs.path(sha).stat().st_size
        manifest = manifest.replace_file(file_name, sha, size, parent)
    if spec.template is not None:
        report("writing template")
        manifest = _set_text(store, manifest, TEMPLATE_FILE, spec.template, parent)
    if spec.system is not None:
        report("writing system prompt")
        manifest = _set_text(store, manifest, SYSTEM_FILE, spec.system, parent)
    if spec.parameters:
        report("writing parameters")
        params = {**_base_params(store, manifest), **spec.parameters}
        manifest = _set_text(store, manifest, PARAMS_FILE, json.dumps(params, indent=2), parent)
    if all(f.path != MODEL_MARKER for f in manifest.files):
        raise InvalidRequestError(
            f"a model needs a {MODEL_MARKER}; give 'from' (a model or a model folder) or upload "
            f"one in 'files'",
            param="from",
        )
    report("writing manifest")
    return store.install(name, Manifest(manifest.files, parent))


def _set_text(store: ModelStore, manifest: Manifest, path: str, text: str, parent: str) -> Manifest:
    data = text.encode()
    sha = store.blobs.write(data)
    return manifest.replace_file(path, sha, len(data), parent)


def _base_params(store: ModelStore, manifest: Manifest) -> dict[str, Any]:
    for f in manifest.files:
        if f.path == PARAMS_FILE:
            try:
                data = json.loads(store.blobs.path(f.sha256).read_bytes())
            except (OSError, ValueError):
                return {}
            return data if isinstance(data, dict) else {}
    return {}
