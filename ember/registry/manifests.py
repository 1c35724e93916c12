"""Manifests: `$EMBER_HOME/manifests/[namespace/]model/tag`, one JSON file per model naming each
of its files by sha256 digest (the bytes live in blobs/). A manifest is written last, by atomic
rename, once every blob it names and the model's folder exist: a model whose write was cut short
has no manifest and is never listed under its manifest's name.

The model's folder (models/[namespace/]model/tag/) is what the engine loads: hard links to the
weight blobs and copies of the small files (which users may edit)."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ember.errors import ModelLoadError

SCHEMA_VERSION = 2
# Files at least this large (and all weights) are hard-linked into a model's folder; smaller ones
# are copied, so that editing params.json in place never changes a shared blob.
LINK_MIN_BYTES = 1024 * 1024
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")


@dataclass(frozen=True, slots=True)
class ManifestFile:
    path: str  # relative, posix
    sha256: str  # hex
    size: int  # bytes

    @property
    def linked(self) -> bool:
        return self.size >= LINK_MIN_BYTES or self.path.endswith(WEIGHT_SUFFIXES)


@dataclass(frozen=True, slots=True)
class Manifest:
    files: tuple[ManifestFile, ...]
    parent: str = ""  # the model it was copied or created from
    created_at: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )
    # The ID a folder had before it was given a manifest (adopted), kept so that adopting or
    # copying it never changes the ID clients saw; "" for the usual ID over the files.
    id: str = ""

    def to_json(self) -> bytes:
        data: dict[str, Any] = {
            "schemaVersion": SCHEMA_VERSION,
            "created_at": self.created_at,
            "parent": self.parent,
            **({"id": self.id} if self.id else {}),
            "files": [
                {"path": f.path, "digest": f"sha256:{f.sha256}", "size": f.size} for f in self.files
            ],
        }
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()

    @property
    def digest(self) -> str:
        """sha256 hex over the files: the model's ID (`ember list` shows its first 12 digits).
        A copy has its original's ID, as in Ollama; any changed file gives a new one."""
        if self.id:
            return self.id
        lines = "".join(f"{f.path}\0{f.sha256}\0{f.size}\n" for f in self.files)
        return hashlib.sha256(lines.encode()).hexdigest()

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @classmethod
    def from_json(cls, raw: bytes, origin: Path) -> Manifest:
        try:
            data = json.loads(raw)
            files = tuple(
                ManifestFile(
                    str(f["path"]), str(f["digest"]).removeprefix("sha256:"), int(f["size"])
                )
                for f in data["files"]
            )
            return cls(
                files,
                str(data.get("parent", "")),
                str(data.get("created_at", "")),
                str(data.get("id", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(
                f"the manifest {origin} is damaged ({exc}); remove the model with 'ember rm' "
                "and pull or create it again"
            ) from exc

    def replace_file(self, path: str, sha256: str, size: int, parent: str) -> Manifest:
        """This manifest with the file at `path` set (added or replaced)."""
        files = [f for f in self.files if f.path != path] + [ManifestFile(path, sha256, size)]
        return Manifest(tuple(sorted(files, key=lambda f: f.path)), parent)


def read_manifest(path: Path) -> Manifest | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    return Manifest.from_json(raw, path)


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Atomic: readers see the old manifest or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("wb") as f:
        f.write(manifest.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
