"""Model architectures, their config, and building one from a model directory.

The names load on first use: `ember.models.config` (what /api/show and `ember show` read) must
not import torch, which the package's other modules do, into the API process."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ember.models.base import CausalLM
    from ember.models.config import ModelConfig
    from ember.models.loader import load_model, resolve_dtype
    from ember.models.registry import get_model_class, supported_architectures

_WHERE = {
    "CausalLM": "ember.models.base",
    "ModelConfig": "ember.models.config",
    "load_model": "ember.models.loader",
    "resolve_dtype": "ember.models.loader",
    "get_model_class": "ember.models.registry",
    "supported_architectures": "ember.models.registry",
}

__all__ = [
    "CausalLM",
    "ModelConfig",
    "get_model_class",
    "load_model",
    "resolve_dtype",
    "supported_architectures",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'ember.models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
