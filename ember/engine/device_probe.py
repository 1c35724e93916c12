"""Which device the engine will run on, decided on the API side without importing torch."""

from __future__ import annotations

import glob
import os
import sys


def expects_cuda(device: str) -> bool:
    """Whether `--device device` runs the engine on CUDA. For "auto" this looks for an NVIDIA
    device node that CUDA_VISIBLE_DEVICES does not hide (torch's own answer when torch is already
    imported); the engine core checks again with torch when it starts, so a wrong guess only
    decides whether the core gets a process of its own."""
    if device != "auto":
        return device.startswith("cuda")
    if "torch" in sys.modules:
        import torch

        return bool(torch.cuda.is_available())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))
