"""Decode steps of one row on CUDA: a Llama-family layer's projections as four Triton GEMVs
with the norms, the residual adds and SiLU-and-multiply fused in (ops/triton_gemv.py), instead
of seven kernels (two norms, four matmuls, one activation) and cuBLAS's split-K reduces. The qkv
GEMV also rotates q and k and stores k and v in the cache (where no q/k norm sits between), so
no rotary kernel runs; the LM head is a GEMV that writes float32 logits.

On by default where it was measured, Hopper and later: the engine's batch-1 decode of the
Llama-3.1-8B shape went from 206.5 to 225.0 tok/s with it on the H200 (docs/benchmarks.md,
2026-12-04). EMBER_FUSED_GEMV=1 turns it on for other GPUs too, =0 off everywhere. The layers are
correct with it (engine parity on the GPU, and under Triton's interpreter on the CPU). Steps of
more than one row, the CPU, and layers with biases keep the usual path: a Triton kernel for 2-4
rows (one accumulator a row) and one for 2-16 (the rows' products on the tensor cores) were
both slower than the pre-op kernels + cuBLAS there (docs/benchmarks.md, fourteenth session).
"""

from __future__ import annotations

import torch

from ember.envflags import env_switch
from ember.ops import use_triton
from ember.ops.triton_gemv import MAX_ROWS
from ember.ops.triton_kv import hopper_or_later

# None: on Hopper and later only; True / False: EMBER_FUSED_GEMV=1 / =0 (tests set it too).
ENABLED: bool | None = env_switch("EMBER_FUSED_GEMV")


def applies(x: torch.Tensor) -> bool:
    """Whether a step's hidden states [T, H] take the fused GEMVs."""
    if not (x.is_cuda and x.dim() == 2 and x.shape[0] <= MAX_ROWS and use_triton(x.device)):
        return False
    return hopper_or_later(x.device) if ENABLED is None else ENABLED
