"""The `gemv` section of gpu_check.py: the experimental small-batch Triton GEMV (with RMSNorm or
SiLU-and-multiply fused in front, ember/ops/triton_gemv.py) against its PyTorch reference, then
timed per Llama-3.1-8B projection next to what the engine runs today (the separate Triton pre-op
and cuBLAS), with the weights rotated through more than the L2 cache holds, as in a decode step.

    python scripts/gpu_check.py --section gemv                       # on the GPU
    TRITON_INTERPRET=1 python scripts/gpu_check.py --section gemv --device cpu --quick
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ember.ops.triton_fused import rms_norm_triton, silu_and_mul_triton
from ember.ops.triton_gemv import (
    PRE_NONE,
    PRE_RMSNORM,
    PRE_SILU_MUL,
    gemv_reference,
    gemv_triton,
)

# (name, N = output features, K = input features, pre-op): one Llama-3.1-8B layer, and the head.
LLAMA_8B_GEMVS = [
    ("qkv + norm", 6144, 4096, PRE_RMSNORM),
    ("o", 4096, 4096, PRE_NONE),
    ("gate_up + norm", 28672, 4096, PRE_RMSNORM),
    ("down + silu", 4096, 14336, PRE_SILU_MUL),
    ("lm_head + norm", 128256, 4096, PRE_RMSNORM),
]
QUICK_GEMVS = [("small", 40, 96, PRE_NONE), ("small norm", 33, 64, PRE_RMSNORM)]
QUICK_GEMVS += [("small silu", 24, 80, PRE_SILU_MUL), ("long k norm", 50, 1000, PRE_RMSNORM)]
CONFIGS = [  # (block_n, block_k, num_warps, num_stages); the first is gemv_triton's default
    (16, 512, 4, 3),
    (8, 512, 4, 3),
    (32, 256, 4, 3),
    (16, 1024, 8, 3),
    (8, 1024, 4, 4),
]
ROTATE_BYTES = 256 * 2**20  # weights cycled per timed call: past the L2 cache
REL_TOL = {torch.bfloat16: 8e-3, torch.float16: 2e-3, torch.float32: 1e-5}


def _inputs(
    n: int, k: int, pre: int, rows: int, dtype: torch.dtype, dev: torch.device, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.randn(rows, 2 * k if pre == PRE_SILU_MUL else k, generator=g, device=dev)
    w = torch.randn(n, k, generator=g, device=dev) / k**0.5
    norm = 1.0 + 0.1 * torch.randn(k, generator=g, device=dev)
    return x.to(dtype), w.to(dtype), norm.to(dtype)


def _check(name: str, n: int, k: int, pre: int, dtype: torch.dtype, dev: torch.device) -> bool:
    g = torch.Generator(device=dev).manual_seed(n + k)
    ok = True
    for rows in (1, 3):
        x, w, norm = _inputs(n, k, pre, rows, dtype, dev, g)
        nw = norm if pre == PRE_RMSNORM else None
        want = gemv_reference(x, w, pre=pre, norm_weight=nw).float()
        for block_n, block_k, warps, stages in CONFIGS[:2]:
            got = gemv_triton(
                x, w, pre=pre, norm_weight=nw, block_n=block_n, block_k=block_k,
                num_warps=warps, num_stages=stages,
            ).float()  # fmt: skip
            rel = ((got - want).norm() / want.norm().clamp_min(1e-30)).item()
            good = rel <= REL_TOL[dtype]
            ok &= good
            print(
                f"{name:16} M={rows} {n}x{k} n{block_n} k{block_k}  rel l2 {rel:9.2e}  "
                f"{'PASS' if good else 'FAIL'}",
                flush=True,
            )
    return ok


def _timings(
    name: str, n: int, k: int, pre: int, hbm_gbps: float, time_us: Callable[..., float]
) -> None:
    dev, dtype = torch.device("cuda"), torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(1)
    copies = max(1, min(16, -(-ROTATE_BYTES // (n * k * 2))))
    sets = [_inputs(n, k, pre, 1, dtype, dev, g) for _ in range(copies)]
    nbytes = n * k * 2

    def today(x: torch.Tensor, w: torch.Tensor, norm: torch.Tensor) -> Callable[[], None]:
        def fn() -> None:
            xin = x
            if pre == PRE_RMSNORM:
                xin = rms_norm_triton(x, norm, 1e-6)
            elif pre == PRE_SILU_MUL:
                xin = silu_and_mul_triton(x)
            F.linear(xin, w)

        return fn

    def cublas(x: torch.Tensor, w: torch.Tensor) -> Callable[[], None]:
        xin = x[:, :k].contiguous()

        def fn() -> None:
            F.linear(xin, w)

        return fn

    def fused(
        x: torch.Tensor, w: torch.Tensor, norm: torch.Tensor, cfg: tuple[int, int, int, int]
    ) -> Callable[[], None]:
        block_n, block_k, warps, stages = cfg

        def fn() -> None:
            gemv_triton(
                x, w, pre=pre, norm_weight=norm, block_n=block_n, block_k=block_k,
                num_warps=warps, num_stages=stages,
            )  # fmt: skip

        return fn

    rows = [
        ("cuBLAS F.linear alone", time_us([cublas(x, w) for x, w, _ in sets])),
        ("pre-op kernel + cuBLAS (today)", time_us([today(*s) for s in sets])),
    ]
    for cfg in CONFIGS:
        label = "Triton fused n{} k{} w{} s{}".format(*cfg)
        rows.append((label, time_us([fused(x, w, nm, cfg) for x, w, nm in sets])))
    base = rows[1][1]
    for label, us in rows:
        gbps = nbytes / us / 1e3
        print(
            f"  {name:16} {label:32} {us:8.1f} us {gbps:7.0f} GB/s {gbps / hbm_gbps:5.0%} of HBM"
            f"  x{base / us:4.2f} vs today",
            flush=True,
        )


def section_gemv(args: argparse.Namespace) -> bool:
    dev = torch.device(args.device)
    quick = args.quick or dev.type == "cpu"
    dtype = torch.float16 if dev.type == "cpu" else torch.bfloat16  # the interpreter: no bf16
    gemvs = QUICK_GEMVS if quick else LLAMA_8B_GEMVS
    ok = all([_check(name, n, k, pre, dtype, dev) for name, n, k, pre in gemvs])
    print(f"gemv correctness: {'all PASS' if ok else 'FAILURES'}", flush=True)
    if dev.type != "cuda":
        return ok
    from scripts.gpu_check import hbm_copy_gbps, time_us

    hbm = hbm_copy_gbps()
    print(f"\nM = 1, bf16; HBM copy bandwidth this run: {hbm:.0f} GB/s (read + write)")
    for name, n, k, pre in LLAMA_8B_GEMVS:
        _timings(name, n, k, pre, hbm, time_us)
    return ok
