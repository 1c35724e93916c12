"""Linear layers whose parameters are allocated, not initialised: a checkpoint fills them.

Skipping the random init matters for cold start: an 8B model would spend seconds filling
parameters that the loader overwrites right after.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Module):
    """y = x @ weight.T + bias, with weight [out_features, in_features] as in HF checkpoints."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}"


class MergedLinear(Linear):
    """Several projections of the same input in one matmul (q/k/v, gate/up).

    The checkpoint stores each part under its own name; `shards` lists (name, rows) in the order
    their rows are stacked in `weight` (and `bias`).
    """

    def __init__(self, in_features: int, shards: list[tuple[str, int]], bias: bool = False) -> None:
        super().__init__(in_features, sum(rows for _, rows in shards), bias)
        self.shards = list(shards)

    def shard_rows(self) -> list[tuple[str, int, int]]:
        """(name, first row, rows) for each part."""
        out: list[tuple[str, int, int]] = []
        start = 0
        for name, rows in self.shards:
            out.append((name, start, rows))
            start += rows
        return out


class Embedding(nn.Module):
    """Token embedding table [vocab_size, hidden_size]."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)
