"""gpu_check --section blas: the small-batch projections under each BLAS library torch offers.

Llama-3.1-8B's projections at 1-16 rows, timed in a CUDA graph with the weights rotated past the
L2 cache (as in a decode step): torch's default (cuBLAS), cuBLASLt
(`torch.backends.cuda.preferred_blas_library`), and for one row `torch.mv`. Printed: µs and the
weight read rate as a share of the HBM copy rate measured in the same run.

H200, 2026-12-03 (docs/benchmarks.md): the three run the same kernels (within 1%); the engine at
batch 1 with cuBLASLt was 210.2 tok/s against 212.5 with the default.

gpu_check --section layout: the same projections with the weight stored [K, N] (input features
major, `x @ w_t`, cuBLAS's other operand order) against today's [N, K] (`F.linear`), at 1-256
rows. At one row cuBLAS's qkv and o read HBM at only 62-73% with [N, K]; this asks whether the
other layout's kernels read faster, and what it costs the 256-row decode GEMMs.
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


LAYOUT_ROWS = (1, 2, 4, 64, 256)


def _matmul_kn(x: torch.Tensor, w_t: torch.Tensor) -> Callable[[], None]:
    def call() -> None:
        torch.matmul(x, w_t)

    return call


def section_layout(args: argparse.Namespace) -> bool:
    from scripts.gpu_check import hbm_copy_gbps, time_us

    hbm = hbm_copy_gbps()
    print(f"HBM copy rate: {hbm:.0f} GB/s")
    print(
        f"{'projection':<9} {'rows':>4} {'[N,K] us':>8} {'of HBM':>6} {'[K,N] us':>8} "
        f"{'of HBM':>6} {'[K,N] speed':>11}"
    )
    for name, n, k in SHAPES:
        ws = rotated_weights(n, k)
        gb = n * k * 2 / 1e9
        for rows in LAYOUT_ROWS:
            x = torch.randn(rows, k, dtype=torch.bfloat16, device="cuda")
            nk = time_us([linear_call(x, w) for w in ws])
            kn_ws = [w.t().contiguous() for w in ws]
            kn_calls = [_matmul_kn(x, w_t) for w_t in kn_ws]
            kn = time_us(kn_calls)
            torch.testing.assert_close(
                torch.matmul(x, kn_ws[0]), F.linear(x, ws[0]), rtol=2e-2, atol=2e-1
            )
            del kn_ws, kn_calls
            print(
                f"{name:<9} {rows:>4} {nk:>8.1f} {gb / nk * 1e6 / hbm:>6.0%} {kn:>8.1f} "
                f"{gb / kn * 1e6 / hbm:>6.0%} {nk / kn:>10.2f}x",
                flush=True,
            )
        del ws
    return True
