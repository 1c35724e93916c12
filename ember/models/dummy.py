"""Random weights of a model's real shapes, made on the device (vLLM's `--load-format dummy`).

For benchmarks and GPU checks: only config.json (and the tokenizer files) need to exist, so an
8B-shaped model costs no disk writes and no load time.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ember.layers.norm import GemmaRMSNorm
from ember.models.base import CausalLM
from ember.models.build import build_model, materialize_buffers
from ember.models.config import ModelConfig


@torch.no_grad()
def dummy_model(
    model_dir: str | Path, dtype: torch.dtype, device: torch.device, seed: int = 0
) -> CausalLM:
    config = ModelConfig.from_dir(model_dir)
    model = build_model(config, dtype, device)
    materialize_buffers(model, device)
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
