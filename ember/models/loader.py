"""Building a model from a local directory: config.json + *.safetensors -> a ready CausalLM."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ember.errors import ModelLoadError
from ember.loader import iter_safetensors
from ember.models.base import CausalLM
from ember.models.config import ModelConfig
from ember.models.registry import get_model_class

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_dtype(name: str, config: ModelConfig, device: torch.device) -> torch.dtype:
    """The compute dtype for a `--dtype` value.

    "auto" is the checkpoint's dtype on GPUs (bfloat16 when config.json names none, or names
    float32, which no one serves on a GPU) and float32 on the CPU, where bf16/fp16 matmuls are slow.
    """
    key = name.lower().removeprefix("torch.")
    if key == "auto":
        if device.type == "cpu":
            return torch.float32
        stored = (config.dtype or "bfloat16").lower().removeprefix("torch.")
        stored_dtype = _DTYPES.get(stored, torch.bfloat16)
        return torch.bfloat16 if stored_dtype == torch.float32 else stored_dtype
    dtype = _DTYPES.get(key)
    if dtype is None:
        raise ModelLoadError(
            f"dtype '{name}' is not supported; use auto, float32, bfloat16 or float16"
        )
    return dtype


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def load_model(model_dir: str | Path, dtype: torch.dtype, device: torch.device) -> CausalLM:
    """Build the model of `model_dir` on `device` in `dtype`, fill it from the safetensors files
    and return it in eval mode. Raises ModelLoadError for anything the user must fix."""
    config = ModelConfig.from_dir(model_dir)
    model_class = get_model_class(config)
    weights = iter_safetensors(model_dir)  # finds the files now: fail before allocating
    # Parameters are allocated once, uninitialised, directly on the device in the final dtype.
    with _default_dtype(dtype), torch.device(device):
        model = model_class(config)
    model.load_weights(weights)
    return model.eval()
