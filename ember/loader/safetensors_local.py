"""Reading (name, tensor) pairs from the *.safetensors files of a local model directory.

Which files: the shards listed in model.safetensors.index.json, else model.safetensors, else every
*.safetensors file in the directory. Tensors come back on the CPU in their stored dtype.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ember.errors import ModelLoadError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def safetensors_files(model_dir: str | Path) -> list[Path]:
    """The weight files of a model directory, in a stable order."""
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelLoadError(f"model directory '{root}' does not exist")
    index = root / INDEX_FILE
    if index.is_file():
        return _files_from_index(index)
    single = root / SINGLE_FILE
    if single.is_file():
        return [single]
    files = sorted(p for p in root.glob("*.safetensors") if p.is_file())
    if not files:
        raise ModelLoadError(
            f"no *.safetensors weights in '{root}'; ember loads safetensors only "
            "(convert PyTorch .bin checkpoints with transformers' save_pretrained)"
        )
    return files


def _files_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"cannot read the shard index '{index}': {exc}") from exc
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelLoadError(f"the shard index '{index}' has an empty weight_map")
    files = [index.parent / str(name) for name in sorted(set(weight_map.values()))]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ModelLoadError(
            f"shard(s) {', '.join(missing)} listed in '{index}' are missing; "
            "the download is incomplete, fetch the model again"
        )
    return files


def iter_safetensors(model_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of the directory's weight files.

    The files are found (and missing ones reported) at call time, before iteration starts.
    """
    return _iter_files(safetensors_files(model_dir))


def _iter_files(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    for path in files:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                    yield name, f.get_tensor(name)
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
            raise ModelLoadError(f"cannot read weights from '{path}': {exc}") from exc
