"""Decode steps of a few rows on CUDA: a Llama-family layer's projections as four Triton GEMVs
with the norms, the residual adds and SiLU-and-multiply fused in (ops/triton_gemv.py), instead
of seven kernels (two norms, four matmuls, one activation).

Off unless EMBER_FUSED_GEMV=1, a development switch: on the H200 (2026-12-03) these GEMVs ran
at 45-86% of HBM where cuBLAS reads at 63-96%, so batch-1 decode fell from 210.8 to 151.4 tok/s
and 4-row steps took 36 ms (docs/benchmarks.md). They stay for tuning against
`gpu_check.py --section gemv`; the layers are correct with them (engine parity, GPU and CPU).
Steps of more than ops.triton_gemv.MAX_ROWS rows, the CPU, and layers with biases keep the
usual path.
"""

from __future__ import annotations

import torch

from ember.envflags import env_flag
from ember.ops import use_triton
from ember.ops.triton_gemv import MAX_ROWS

ENABLED = env_flag("EMBER_FUSED_GEMV", False)


def applies(x: torch.Tensor) -> bool:
    """Whether a step's hidden states [T, H] take the fused GEMVs."""
    return (
        ENABLED and x.is_cuda and x.dim() == 2 and x.shape[0] <= MAX_ROWS and use_triton(x.device)
    )
