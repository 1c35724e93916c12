"""Reading model weights from where they are stored into host memory."""

from __future__ import annotations

from ember.loader.safetensors_local import iter_safetensors, safetensors_files

__all__ = ["iter_safetensors", "safetensors_files"]
