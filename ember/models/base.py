"""The interface every architecture gives the engine."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ember.layers.metadata import AttentionMetadata, KVCache
from ember.models.config import ModelConfig


class CausalLM(nn.Module, ABC):
    """A decoder-only model: its decoder stack is `self.model` (with `.layers`), its head
    `compute_logits`."""

    config: ModelConfig
    model: nn.Module

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """input_ids, positions [T] (int64) -> hidden states [T, hidden_size].

        kv_caches holds one (k_cache, v_cache) pair per layer, laid out as metadata.py says.
        """
        hidden_states: torch.Tensor = self.model(input_ids, positions, kv_caches, attn_metadata)
        return hidden_states

    @abstractmethod
    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden states [N, hidden_size] -> float32 logits [N, vocab_size]."""

    @contextmanager
    def layers_subset(self, keep: Sequence[int]) -> Iterator[None]:
        """Forward passes inside run through the decoder layers `keep` only, in that order (they
        take one KV cache pair each)."""
        stack = getattr(self, "model", None)
        full = getattr(stack, "layers", None)
        if stack is None or not isinstance(full, nn.ModuleList):
            raise TypeError(f"{type(self).__name__} has no decoder stack at model.layers")
        stack.layers = nn.ModuleList([full[i] for i in keep])
        try:
            yield
        finally:
            stack.layers = full

    def droppable_parameters(self) -> tuple[str, ...]:
        """Names of parameters that load_weights may replace (an untied head that a checkpoint
        without one ties to the embeddings): allocated apart, so that dropping one frees it."""
        return ()

    @abstractmethod
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Fill the parameters from (Hugging Face tensor name, tensor) pairs.

        Raises ModelLoadError naming the tensor on a shape mismatch, an unexpected tensor, or a
        parameter that the checkpoint never provided.
        """
