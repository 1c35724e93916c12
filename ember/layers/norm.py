"""RMSNorm as Llama, Mistral and Qwen use it, and Gemma's (1 + weight) variant."""

from __future__ import annotations

from typing import overload

import torch
from torch import nn

from ember.ops import use_triton
from ember.ops.triton_fused import rms_norm_triton


class RMSNorm(nn.Module):
    """x / rms(x) * weight, normalised in float32 and scaled in the input dtype (as HF does).

    With `residual` given, the residual is added first (in the input dtype) and the sum is
    returned as the new residual: `(norm(x + residual), x + residual)`. On CUDA one Triton kernel
    does all of it and the sum is written into `residual` in place.
    """

    weight_offset = 0.0  # the kernel scales by (weight + weight_offset)

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.eps = eps

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)

    @overload
    def forward(self, x: torch.Tensor, residual: None = None) -> torch.Tensor: ...

    @overload
    def forward(
        self, x: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if x.is_cuda and x.dim() == 2 and use_triton(x.device):
            out = rms_norm_triton(x, self.weight, self.eps, residual, self.weight_offset)
            return out if residual is None else (out, residual)
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class GemmaRMSNorm(RMSNorm):
    """x / rms(x) * (1 + weight), all in float32 and rounded once to the input dtype (as HF's
    Gemma does; its checkpoints store weight - 1). The residual form is RMSNorm's.

    On CUDA the Triton kernel rounds the normalised x before scaling, as for Llama: within one
    rounding of the activation dtype of HF's order.
    """

    weight_offset = 1.0

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__(hidden_size, eps)
        self.weight.data.zero_()

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * (1.0 + self.weight.float())).to(x.dtype)
