"""Activations over fused projections."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ember.ops import use_triton
from ember.ops.triton_fused import silu_and_mul_triton


class SiluAndMul(nn.Module):
    """silu(gate) * up, where the input is the fused gate_up output [..., 2 * d] = [gate | up]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and x.dim() == 2 and use_triton(x.device):
            return silu_and_mul_triton(x)
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up


class GeluTanhAndMul(nn.Module):
    """gelu(gate, tanh approximation) * up over the fused [gate | up] (Gemma's GeGLU).

    Torch only for now: a fused Triton kernel would save one launch per layer on CUDA.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.gelu(gate, approximate="tanh") * up
