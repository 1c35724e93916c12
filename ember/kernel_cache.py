"""Where compiled GPU kernels are kept between starts.

Triton compiles each kernel variant the first time a process runs it (about 9 s in all for an
8B model on an H200) and caches the result on disk, by default under ~/.triton. `ember serve`
points that cache into ember's home instead, so it lives next to the models (a persistent
volume on Kubernetes), and `ember build --kernel-cache` can bake it into an image.
"""

from __future__ import annotations

import os
from pathlib import Path

KERNEL_CACHE_SUBDIR = "kernels/triton"


def use_kernel_cache(home: Path) -> Path:
    """Set TRITON_CACHE_DIR to home/kernels/triton unless the environment already sets it
    (before Triton is imported: the engine core's process inherits it). Returns the folder."""
    current = os.environ.get("TRITON_CACHE_DIR")
    if current:
        return Path(current)
    path = home / KERNEL_CACHE_SUBDIR
    os.environ["TRITON_CACHE_DIR"] = str(path)
    return path
