"""Getting model weights from where they are stored onto the device: sources (local, file://,
s3://, gs://, http(s)://, hf://), safetensors headers, and the streamer that moves bytes through
a pinned ring into parameters in place."""

from __future__ import annotations

from ember.loader.files import weight_files
from ember.loader.header import TensorMeta
from ember.loader.safetensors_local import iter_safetensors, safetensors_files
from ember.loader.source import Source, resolve_source
from ember.loader.streamer import LoadStats, Progress, SafetensorsStreamer, StreamOptions

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
