"""Which class serves which Hugging Face architecture name (config.json's architectures[0]).

Adding an architecture is one line here: the name, and the module and class that implement it
(imported only when that architecture is loaded).
"""

from __future__ import annotations

import importlib

from ember.errors import ModelLoadError
from ember.models.base import CausalLM
from ember.models.config import ModelConfig

_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "Gemma2ForCausalLM": ("ember.models.gemma2", "Gemma2ForCausalLM"),
    "Gemma3ForCausalLM": ("ember.models.gemma3", "Gemma3ForCausalLM"),
    "Gemma3ForConditionalGeneration": ("ember.models.gemma3", "Gemma3ForCausalLM"),
    "LlamaForCausalLM": ("ember.models.llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("ember.models.llama", "LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("ember.models.llama", "LlamaForCausalLM"),
    "Qwen3ForCausalLM": ("ember.models.llama", "LlamaForCausalLM"),
}


def supported_architectures() -> list[str]:
    return list(_ARCHITECTURES)


def get_model_class(config: ModelConfig) -> type[CausalLM]:
    arch = config.architecture
    entry = _ARCHITECTURES.get(arch)
    if entry is None:
        shown = f"'{arch}'" if arch else "(none listed in config.json)"
        raise ModelLoadError(
            f"architecture {shown} is not supported; supported: "
            f"{', '.join(supported_architectures())}"
        )
    module_name, class_name = entry
    cls: type[CausalLM] = getattr(importlib.import_module(module_name), class_name)
    return cls
