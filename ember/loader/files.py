"""Which files of a model hold its weights.

The shards listed in model.safetensors.index.json, else model.safetensors, else every
*.safetensors file at the root (sources that cannot list need one of the first two).
"""

from __future__ import annotations

import json

from ember.errors import ModelLoadError
from ember.loader.source import Source

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def is_safe_name(name: str) -> bool:
    """Whether `name` (from a shard index or a source's listing) names a file inside the model's
    folder: relative, '/'-separated, with no empty or '..' part. Such names become paths under a
    staging or cache folder; any other could write outside it."""
    if not name or "\\" in name or "\x00" in name or name.startswith(("/", "~")):
        return False
    parts = name.split("/")
    return all(part not in ("", "..") for part in parts) and parts[-1] != "."


def weight_files(source: Source) -> tuple[list[str], dict[str, str]]:
    """(weight file names in a stable order, the index's tensor -> file map or {})."""
    listing = source.list_files()
    if _has(source, listing, INDEX_FILE):
        weight_map = _read_index(source)
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not _has(source, listing, f)]
        local = source.local_dir()
        folders = [f for f in missing if local is not None and (local / f).is_dir()]
        if folders:
            raise ModelLoadError(
                f"shard(s) {', '.join(folders)} listed in '{source.location(INDEX_FILE)}' are "
                "folders, not safetensors files; the download is broken, fetch the model again"
            )
        if missing:
            raise ModelLoadError(
                f"shard(s) {', '.join(missing)} listed in '{source.location(INDEX_FILE)}' are "
                "missing; the download is incomplete, fetch the model again"
            )
        return files, weight_map
    if _has(source, listing, SINGLE_FILE):
        return [SINGLE_FILE], {}
    files = sorted(f for f in listing or [] if f.endswith(".safetensors") and "/" not in f)
    if not files:
        raise ModelLoadError(
            f"no *.safetensors weights in '{source.uri}'; ember loads safetensors only "
            "(convert PyTorch .bin checkpoints with transformers' save_pretrained)"
        )
    return files, {}


def _has(source: Source, listing: list[str] | None, name: str) -> bool:
    return name in listing if listing is not None else source.exists(name)


def _read_index(source: Source) -> dict[str, str]:
    where = source.location(INDEX_FILE)
    try:
        index = json.loads(source.read_file(INDEX_FILE))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read the shard index '{where}': {exc}") from exc
    if not isinstance(index, dict) or "weight_map" not in index:
        raise ModelLoadError(
            f"the shard index '{where}' is not a JSON object with a \"weight_map\"; the file "
            "is corrupt, fetch the model again"
        )
    weight_map = index["weight_map"]
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelLoadError(f"the shard index '{where}' has an empty weight_map")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise ModelLoadError(f"the shard index '{where}' maps names to something not a file name")
    for file in sorted(set(weight_map.values())):
        if not is_safe_name(file):
            raise ModelLoadError(
                f"the shard index '{where}' names {file!r} as a shard; a shard must be a file "
                "inside the model's folder (a relative name without '..'), so the index is "
                "corrupt or not to be trusted"
            )
    return weight_map
