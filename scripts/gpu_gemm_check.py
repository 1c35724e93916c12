"""gpu_check --section gemm: the decode step's matmuls at 64-512 rows, cuBLAS against Triton tiles.

At 256 rows a Llama-3.1-8B decode step spends ~6.5 ms in its matmuls (3.6 TFLOP: ~550 TFLOP/s
against ~790 for an 8192-row matmul). With 128 x 128 output tiles, the projections with 4096
or 6144 outputs give 64-96 tiles at 256 rows: less than one wave on 132 SMs. This section times
each projection under torch (cuBLAS) and under a plain Triton matmul with smaller or differently
shaped tiles (grouped launch order, fp32 accumulation), weights rotated past L2 in a CUDA graph,
and checks the Triton result against torch's.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ember.ops.triton_kv import jit, tl, triton
from scripts.gpu_blas_check import LAYER_SHAPES, linear_call, rotated_weights

ROWS = (64, 128, 256, 512)
Config = tuple[int, int, int, int, int]  # (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)
CONFIGS: list[Config] = [
    (64, 128, 64, 4, 4),
    (128, 64, 64, 4, 4),
    (64, 64, 128, 4, 4),
    (64, 256, 64, 8, 3),
    (128, 128, 64, 8, 3),
    (128, 256, 64, 8, 3),
    (64, 128, 128, 4, 3),
]


@jit
def _mm_kernel(
    a_ptr,  # [M, K]
    w_ptr,  # [N, K]: the output is a @ w.T, as F.linear
    c_ptr,  # [M, N]
    M,
    N,
    K,
    stride_am,
    stride_wn,
    stride_cm,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a = a_ptr + rm[:, None].to(tl.int64) * stride_am + rk[None, :]
    w = w_ptr + rn[None, :].to(tl.int64) * stride_wn + rk[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for _ in range(0, tl.cdiv(K, BLOCK_K)):
        x = tl.load(a, mask=rm[:, None] < M, other=0.0)
        y = tl.load(w, mask=rn[None, :] < N, other=0.0)
        acc = tl.dot(x, y, acc)
        a += BLOCK_K
        w += BLOCK_K
    c = c_ptr + rm[:, None].to(tl.int64) * stride_cm + rn[None, :]
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


def matmul_triton(x: torch.Tensor, w: torch.Tensor, cfg: Config) -> torch.Tensor:
    """x [M, K] @ w.T with w [N, K] (K a multiple of BLOCK_K), bf16 out."""
    bm, bn, bk, warps, stages = cfg
    m, k = x.shape
    n = w.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    _mm_kernel[grid](
        x, w, out, m, n, k, x.stride(0), w.stride(0), out.stride(0),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out


def _triton_call(x: torch.Tensor, w: torch.Tensor, cfg: Config) -> Callable[[], None]:
    def call() -> None:
        matmul_triton(x, w, cfg)

    return call


def section_gemm(args: argparse.Namespace) -> bool:
    from scripts.gpu_check import time_us

    ok = True
    print(f"{'projection':<9} {'rows':>4} {'kernel':<22} {'us':>8} {'TFLOP/s':>8} {'vs torch':>8}")
    for name, n, k in LAYER_SHAPES:
        ws = rotated_weights(n, k, 1 / 64)
        for rows in ROWS:
            x = torch.randn(rows, k, dtype=torch.bfloat16, device="cuda")
            flop = 2 * rows * n * k
            base = time_us([linear_call(x, w) for w in ws])
            print(
                f"{name:<9} {rows:>4} {'torch (cuBLAS)':<22} {base:>8.1f} {flop / base / 1e6:>8.0f}"
            )
            want = F.linear(x, ws[0]).float()
            for cfg in CONFIGS:
                got = matmul_triton(x, ws[0], cfg).float()
                err = ((got - want).norm() / want.norm()).item()
                if err > 1e-2:
                    ok = False
                us = time_us([_triton_call(x, w, cfg) for w in ws])
                label = "triton {}x{}x{} w{} s{}".format(*cfg)
                mark = "" if err <= 1e-2 else f"  WRONG (rel {err:.1e})"
                print(
                    f"{name:<9} {rows:>4} {label:<22} {us:>8.1f} {flop / us / 1e6:>8.0f}"
                    f" {base / us:>7.2f}x{mark}",
                    flush=True,
                )
        del ws
    return ok
