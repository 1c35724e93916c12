"""Reading (name, tensor) pairs from the *.safetensors files of a local model directory.

Which files: see files.py. Tensors come back on the CPU in their stored dtype, read by the
streamer (so the same checks apply); load_model streams straight into a model instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from ember.loader.files import weight_files
from ember.loader.local import LocalSource
from ember.loader.streamer import SafetensorsStreamer


def safetensors_files(model_dir: str | Path) -> list[Path]:
    """The weight files of a model directory, in a stable order."""
    source = LocalSource(model_dir)
    files, _ = weight_files(source)
    return [source.root / name for name in files]


def iter_safetensors(model_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of the directory's weight files.

    The files are found and their headers checked at call time, before iteration starts.
    """
    source = LocalSource(model_dir)
    try:
        streamer = SafetensorsStreamer(source, torch.device("cpu"))
    except BaseException:
        source.close()
        raise
    return _closing(streamer.stream(), source)


def _closing(
    tensors: Iterator[tuple[str, torch.Tensor]], source: LocalSource
) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        yield from tensors
    finally:
        source.close()
