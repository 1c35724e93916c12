"""Gemma 3 text: Gemma 2 plus RMSNorm over each q/k head before rope, and two rope bases
(rope_local_base_freq for the sliding-window layers, rope_theta with rope_scaling for the global
ones, every sliding_window_pattern-th layer). It has no softcaps by default.

Also serves the language model of Gemma3ForConditionalGeneration checkpoints: their tensors are
named `language_model.model.*` (as published) or `model.language_model.*` (as transformers 5
saves them); the vision tower and projector are skipped.
"""

from __future__ import annotations

from ember.models.gemma2 import Gemma2ForCausalLM

_TEXT_PREFIXES = (
    ("language_model.model.", "model."),
    ("model.language_model.", "model."),
    ("language_model.lm_head.", "lm_head."),
)
_VISION_PREFIXES = (
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
)


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    qk_norm = True

    def checkpoint_name(self, name: str) -> str | None:
        if name.startswith(_VISION_PREFIXES):
            return None
        for theirs, ours in _TEXT_PREFIXES:
            if name.startswith(theirs):
                name = ours + name.removeprefix(theirs)
                break
        return super().checkpoint_name(name)
