"""Random weights of a model's real shapes, made on the device (vLLM's `--load-format dummy`).

For benchmarks and GPU checks: only config.json (and the tokenizer files) need to exist, so an
8B-shaped model costs no disk writes and no load time.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ember.layers.norm import GemmaRMSNorm
from ember.models.base import CausalLM
from ember.models.config import ModelConfig
from ember.models.registry import get_model_class


@torch.no_grad()
def dummy_model(
    model_dir: str | Path, dtype: torch.dtype, device: torch.device, seed: int = 0
) -> CausalLM:
    config = ModelConfig.from_dir(model_dir)
    model_class = get_model_class(config)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_class(config)
    finally:
        torch.set_default_dtype(previous)
    gen = torch.Generator(device=device).manual_seed(seed)
    # Gemma's norms scale by (1 + weight): 0 is their unit scale.
    offset_norms = {
        f"{name}.weight" for name, m in model.named_modules() if isinstance(m, GemmaRMSNorm)
    }
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(0.0 if name in offset_norms else 1.0)
        else:
            # std 0.02 as Hugging Face initialises; scaled so activations stay in range.
            param.normal_(0.0, 0.02, generator=gen)
    return model.eval()
