"""Model architectures, their config, and building one from a model directory."""

from __future__ import annotations

from ember.models.base import CausalLM
from ember.models.config import ModelConfig
from ember.models.loader import load_model, resolve_dtype
from ember.models.registry import get_model_class, supported_architectures

__all__ = [
    "CausalLM",
    "ModelConfig",
    "get_model_class",
    "load_model",
    "resolve_dtype",
    "supported_architectures",
]
