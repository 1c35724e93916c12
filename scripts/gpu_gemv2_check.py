"""The `gemv2` section of gpu_check.py: the tile sweep behind ops/triton_gemv.gemv_config. The
batch-1 GEMV with nothing fused in front (its programs keep a [BLOCK_N, BLOCK_K] float32
accumulator across the K loop and reduce it once at the end) against cuBLAS on Llama-3.1-8B's
projections, the weights rotated past L2 and every timing graph-replayed. Checked against F.linear
first. Prints the best configurations of the sweep for each projection, and the share of the HBM
copy rate measured in the same run.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ember.ops.triton_gemv import gemv_triton
from scripts.gpu_gemv_check import ROTATE_BYTES

SHAPES = (("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336))
CONFIGS = list(itertools.product((4, 8, 16), (256, 512, 1024), (4, 8), (3, 4, 6)))


def gemv_acc(x: torch.Tensor, w: torch.Tensor, cfg: tuple[int, int, int, int]) -> torch.Tensor:
    block_n, block_k, warps, stages = cfg
    return gemv_triton(x, w, block_n=block_n, block_k=block_k, num_warps=warps, num_stages=stages)


def section_gemv2(args: argparse.Namespace) -> bool:
    from scripts.gpu_check import hbm_copy_gbps

    hbm = hbm_copy_gbps()
    print(f"HBM copy {hbm:.0f} GB/s (read + write); M = 1, bf16")
    g = torch.Generator(device="cuda").manual_seed(5)
    ok = all([_shape(name, n, k, hbm, g) for name, n, k in SHAPES])
    return ok


def _shape(name: str, n: int, k: int, hbm: float, g: torch.Generator) -> bool:
    from scripts.gpu_check import time_us

    copies = max(1, min(16, -(-ROTATE_BYTES // (n * k * 2))))
    ws = [
        (torch.randn(n, k, generator=g, device="cuda") * k**-0.5).to(torch.bfloat16)
        for _ in range(copies)
    ]
    x = torch.randn(1, k, generator=g, device="cuda").to(torch.bfloat16)
    y = torch.empty(1, n, device="cuda", dtype=torch.bfloat16)
    ref = F.linear(x, ws[0]).float()
    err = ((gemv_acc(x, ws[0], CONFIGS[0]).float() - ref).norm() / ref.norm()).item()
    print(f"{name}: relative error {err:.1e} {'PASS' if err < 1e-2 else 'FAIL'}", flush=True)

    def cublas(w: torch.Tensor) -> Callable[[], None]:
        def fn() -> None:
            torch.mm(x, w.t(), out=y)

        return fn

    def ours(w: torch.Tensor, cfg: tuple[int, int, int, int]) -> Callable[[], None]:
        def fn() -> None:
            gemv_acc(x, w, cfg)

        return fn

    base = time_us([cublas(w) for w in ws])
    rows = []
    for cfg in CONFIGS:
        if cfg[0] * cfg[1] > 16 * 1024 or k % cfg[1]:
            continue
        try:
            us = time_us([ours(w, cfg) for w in ws])
        except Exception as e:  # out of resources for a big tile: skip it
            print(f"  {cfg}: {type(e).__name__}")
            continue
        rows.append((us, cfg))
    rows.sort()
    gbs = n * k * 2 / base / 1e3
    print(f"  cuBLAS {base:6.1f} us {gbs:6.0f} GB/s ({gbs / hbm:.0%} of the copy rate)")
    for us, cfg in rows[:4]:
        gbs = n * k * 2 / us / 1e3
        print(f"  n{cfg[0]} k{cfg[1]} w{cfg[2]} s{cfg[3]}: {us:6.1f} us {gbs:6.0f} GB/s "
              f"({base / us:.2f}x cuBLAS)")  # fmt: skip
    return err < 1e-2
