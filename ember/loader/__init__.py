"""Getting model weights from where they are stored onto the device: sources (local, file://,
s3://, gs://, http(s)://, hf://), safetensors headers, and the streamer that moves bytes through
a pinned ring into parameters in place.

The names below import their modules on first use, so that the torch-free parts (sources, the
file list, prefetch.py) can be imported by the API process without pulling in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ember.loader.files import weight_files
    from ember.loader.header import TensorMeta
    from ember.loader.safetensors_local import iter_safetensors, safetensors_files
    from ember.loader.source import Source, resolve_source
    from ember.loader.streamer import LoadStats, Progress, SafetensorsStreamer, StreamOptions

_HOMES = {
    "LoadStats": "ember.loader.streamer",
    "Progress": "ember.loader.streamer",
    "SafetensorsStreamer": "ember.loader.streamer",
    "Source": "ember.loader.source",
    "StreamOptions": "ember.loader.streamer",
    "TensorMeta": "ember.loader.header",
    "iter_safetensors": "ember.loader.safetensors_local",
    "resolve_source": "ember.loader.source",
    "safetensors_files": "ember.loader.safetensors_local",
    "weight_files": "ember.loader.files",
}

__all__ = [
    "LoadStats",
    "Progress",
    "SafetensorsStreamer",
    "Source",
    "StreamOptions",
    "TensorMeta",
    "iter_safetensors",
    "resolve_source",
    "safetensors_files",
    "weight_files",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ember.loader' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
