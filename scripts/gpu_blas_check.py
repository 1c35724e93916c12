"""gpu_check --section blas: the small-batch projections under each BLAS library torch offers.

Llama-3.1-8B's projections at 1-16 rows, timed in a CUDA graph with the weights rotated past the
L2 cache (as in a decode step): torch's default (cuBLAS), cuBLASLt
(`torch.backends.cuda.preferred_blas_library`), and for one row `torch.mv`. Printed: µs and the
weight read rate as a share of the HBM copy rate measured in the same run.

H200, 2026-12-03 (docs/benchmarks.md): the three run the same kernels (within 1%); the engine at
batch 1 with cuBLASLt was 210.2 tok/s against 212.5 with the default.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

# (name, N = output features, K = input features): one Llama-3.1-8B layer's projections.
LAYER_SHAPES = [
    ("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336),
]  # fmt: skip
SHAPES = [*LAYER_SHAPES, ("lm_head", 128256, 4096)]
ROWS = (1, 4, 8, 16)
ROTATE_BYTES = 256 * 2**20


def rotated_weights(n: int, k: int, scale: float = 1.0) -> list[torch.Tensor]:
    """Random bf16 [n, k] weights on the GPU, as many copies (up to 8) as it takes to pass
    ROTATE_BYTES, so timed calls cycling through them read HBM, not L2."""
    copies = max(1, min(8, -(-ROTATE_BYTES // (n * k * 2))))
    return [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * scale for _ in range(copies)]


def linear_call(x: torch.Tensor, w: torch.Tensor) -> Callable[[], None]:
    def call() -> None:
        F.linear(x, w)

    return call


def _mv(x: torch.Tensor, w: torch.Tensor) -> Callable[[], None]:
    v = x[0]

    def call() -> None:
        torch.mv(w, v)

    return call


def section_blas(args: argparse.Namespace) -> bool:
    from scripts.gpu_check import hbm_copy_gbps, time_us

    hbm = hbm_copy_gbps()  # bytes read plus written a second: what a read-only kernel can reach
    print(f"HBM copy rate: {hbm:.0f} GB/s")
    print(f"{'projection':<9} {'rows':>4} {'library':<9} {'us':>7} {'GB/s':>6} {'of HBM':>6}")
    default = torch.backends.cuda.preferred_blas_library()
    try:
        for name, n, k in SHAPES:
            ws = rotated_weights(n, k)
            gb = n * k * 2 / 1e9
            for rows in ROWS:
                x = torch.randn(rows, k, dtype=torch.bfloat16, device="cuda")
                variants: list[tuple[str, str, Callable]] = [
                    ("cublas", "cublas", linear_call),
                    ("cublaslt", "cublaslt", linear_call),
                ]
                if rows == 1:
                    variants.append(("mv", "cublas", _mv))
                for label, lib, make in variants:
                    torch.backends.cuda.preferred_blas_library(lib)
                    us = time_us([make(x, w) for w in ws])
                    rate = gb / us * 1e6
                    print(
                        f"{name:<9} {rows:>4} {label:<9} {us:>7.1f} {rate:>6.0f} {rate / hbm:>6.0%}",
                        flush=True,
                    )
            del ws
    finally:
        torch.backends.cuda.preferred_blas_library(default)
    return True
