"""The `gemv` section of gpu_check.py: the batch-1 Triton GEMV (with RMSNorm or SiLU-and-multiply
fused in front, ember/ops/triton_gemv.py; the engine's default for one-row steps) against its
PyTorch reference, then timed per Llama-3.1-8B projection next to the unfused path
(EMBER_FUSED_GEMV=0: the separate Triton pre-op and cuBLAS), with the weights rotated through
more than the L2 cache holds, as in a decode step.

    python scripts/gpu_check.py --section gemv                       # on the GPU
    TRITON_INTERPRET=1 python scripts/gpu_check.py --section gemv --device cpu --quick
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from ember.layers.metadata import KVStore
from ember.layers.rotary import RotaryEmbedding, rotate_neox
from ember.ops.triton_fused import rms_norm_triton, rotary_triton, silu_and_mul_triton
from ember.ops.triton_gemv import (
    PRE_ADD_RMSNORM,
    PRE_NONE,
    PRE_RMSNORM,
    PRE_SILU_MUL,
    gemv_reference,
    gemv_triton,
)
from ember.ops.triton_qkv_rotary import QKVRotary

# (name, N = output features, K = input features, pre-op): one Llama-3.1-8B layer, and the head.
LLAMA_8B_GEMVS = [
    ("qkv + add + norm", 6144, 4096, PRE_ADD_RMSNORM),
    ("qkv + norm", 6144, 4096, PRE_RMSNORM),
    ("o", 4096, 4096, PRE_NONE),
    ("gate_up + norm", 28672, 4096, PRE_RMSNORM),
    ("down + silu", 4096, 14336, PRE_SILU_MUL),
    ("lm_head + norm", 128256, 4096, PRE_RMSNORM),
]
QUICK_GEMVS = [("small", 40, 96, PRE_NONE), ("small norm", 33, 64, PRE_RMSNORM)]
QUICK_GEMVS += [("small silu", 24, 80, PRE_SILU_MUL), ("long k norm", 50, 1000, PRE_RMSNORM)]
QUICK_GEMVS += [("add + norm", 40, 1000, PRE_ADD_RMSNORM)]
CONFIGS = [  # (block_n, block_k, num_warps, num_stages, fold); fold 1: the accumulator unfolded
    (4, 1024, 4, 3, 1),
    (8, 1024, 4, 3, 1),
    (16, 512, 8, 3, 1),
    (4, 1024, 4, 3, 8),
    (8, 1024, 4, 3, 8),
    (16, 512, 8, 3, 8),
    (8, 512, 4, 3, 8),
    (16, 512, 4, 3, 8),
]
# Per projection of _layer_chain, beside gemv_triton's own choice (gemv_config's tiles, folded):
# those tiles before the accumulator was folded, and the folded sweep's best (2026-12-04).
LAYER_CONFIGS = {"qkv": CONFIGS[2], "o": CONFIGS[1], "gate_up": CONFIGS[2], "down": CONFIGS[1]}
LAYER_FOLDED_BEST = {"qkv": CONFIGS[6], "o": CONFIGS[3], "gate_up": CONFIGS[4], "down": CONFIGS[3]}
CUDA = torch.device("cuda")
ROTATE_BYTES = 256 * 2**20  # weights cycled per timed call: past the L2 cache
REL_TOL = {torch.bfloat16: 8e-3, torch.float16: 2e-3, torch.float32: 1e-5}


def _randn(g: torch.Generator, dtype: torch.dtype, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=g, device=g.device) * scale).to(dtype)


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
    x, w, norm = _inputs(n, k, pre, 1, dtype, dev, g)
    nw = norm if pre in (PRE_RMSNORM, PRE_ADD_RMSNORM) else None
    res = torch.randn(1, k, generator=g, device=dev).to(dtype) if pre == PRE_ADD_RMSNORM else None
    res_ref, res_got = (torch.empty_like(res), torch.empty_like(res)) if res is not None else (
        None, None)  # fmt: skip
    want = gemv_reference(x, w, pre=pre, norm_weight=nw, residual=res, residual_out=res_ref).float()
    for block_n, block_k, warps, stages, fold in CONFIGS:
        got = gemv_triton(
            x, w, pre=pre, norm_weight=nw, residual=res, residual_out=res_got,
            block_n=block_n, block_k=block_k, num_warps=warps, num_stages=stages, fold=fold,
        ).float()  # fmt: skip
        rel = ((got - want).norm() / want.norm().clamp_min(1e-30)).item()
        good = rel <= REL_TOL[dtype]
        if res_ref is not None and res_got is not None:
            good &= torch.equal(res_ref, res_got)  # the residual stream, exactly
        ok &= good
        print(
            f"{name:16} {n}x{k} n{block_n} k{block_k} f{fold}  rel l2 {rel:9.2e}  "
            f"{'PASS' if good else 'FAIL'}",
            flush=True,
        )
    return ok


def _timings(
    name: str,
    n: int,
    k: int,
    pre: int,
    hbm_gbps: float,
    time_us: Callable[..., float],
    dev: torch.device = CUDA,
) -> None:
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float16
    g = torch.Generator(device=dev).manual_seed(1)
    copies = max(1, min(16, -(-ROTATE_BYTES // (n * k * 2))))
    sets = [_inputs(n, k, pre, 1, dtype, dev, g) for _ in range(copies)]
    nbytes = n * k * 2
    res = torch.randn(1, k, generator=g, device=dev).to(dtype)
    res_out = res.clone()  # "unfused" adds into it in place

    def unfused(x: torch.Tensor, w: torch.Tensor, norm: torch.Tensor) -> Callable[[], None]:
        def fn() -> None:
            xin = x
            if pre == PRE_RMSNORM:
                xin = rms_norm_triton(x, norm, 1e-6)
            elif pre == PRE_ADD_RMSNORM:
                xin = rms_norm_triton(x, norm, 1e-6, res_out)  # adds into res_out in place
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
        x: torch.Tensor, w: torch.Tensor, norm: torch.Tensor, cfg: tuple[int, int, int, int, int]
    ) -> Callable[[], None]:
        block_n, block_k, warps, stages, fold = cfg

        adds = pre == PRE_ADD_RMSNORM

        def fn() -> None:
            gemv_triton(
                x, w, pre=pre, norm_weight=norm, block_n=block_n, block_k=block_k,
                num_warps=warps, num_stages=stages, residual=res if adds else None,
                residual_out=res_out if adds else None, fold=fold,
            )  # fmt: skip

        return fn

    rows = [
        ("cuBLAS F.linear alone", time_us([cublas(x, w) for x, w, _ in sets])),
        ("pre-op kernel + cuBLAS (unfused)", time_us([unfused(*s) for s in sets])),
    ]
    for cfg in CONFIGS:
        label = "Triton fused n{} k{} w{} s{} f{}".format(*cfg)
        rows.append((label, time_us([fused(x, w, nm, cfg) for x, w, nm in sets])))
    base = rows[1][1]
    for label, us in rows:
        gbps = nbytes / us / 1e3
        print(
            f"  {name:16} {label:32} {us:8.1f} us {gbps:7.0f} GB/s {gbps / hbm_gbps:5.0%} of HBM"
            f"  x{base / us:4.2f} vs unfused",
            flush=True,
        )


def section_gemv(args: argparse.Namespace) -> bool:
    dev = torch.device(args.device)
    quick = args.quick or dev.type == "cpu"
    dtype = torch.float16 if dev.type == "cpu" else torch.bfloat16  # the interpreter: no bf16
    gemvs = QUICK_GEMVS if quick else LLAMA_8B_GEMVS
    ok = all([_check(name, n, k, pre, dtype, dev) for name, n, k, pre in gemvs])
    heads = (4, 2, 16) if quick else (32, 8, 128)
    caches = [dtype] if dev.type == "cpu" else [dtype, torch.float8_e4m3fn]
    ok &= all([_check_rotary(heads, cache, dtype, dev) for cache in caches])
    ok &= _check_logits(40 if quick else 128256, 96 if quick else 4096, dtype, dev)
    print(f"gemv correctness: {'all PASS' if ok else 'FAILURES'}", flush=True)
    if dev.type != "cuda":
        return ok
    from scripts.gpu_check import hbm_copy_gbps, time_us

    hbm = hbm_copy_gbps()
    print(f"\nM = 1, bf16; HBM copy bandwidth this run: {hbm:.0f} GB/s (read + write)")
    for name, n, k, pre in LLAMA_8B_GEMVS:
        _timings(name, n, k, pre, hbm, time_us)
    _layer_chain(hbm, time_us)
    _rotary_timings(time_us)
    _logits_timings(time_us)
    return ok


def _head(
    vocab: int, hidden: int, dtype: torch.dtype, dev: torch.device, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch-1 LM head's input row and weight [vocab, hidden]."""
    x, w, _ = _inputs(
        vocab, hidden, PRE_NONE, 1, dtype, dev, torch.Generator(dev).manual_seed(seed)
    )
    return x, w


def _check_logits(vocab: int, hidden: int, dtype: torch.dtype, dev: torch.device) -> bool:
    """The LM head's float32 logits straight from the GEMV (out_dtype) equal its own output in
    the model's dtype, cast: rounded once, as the head's `.float()` after cuBLAS has them."""
    x, w = _head(vocab, hidden, dtype, dev, seed=4)
    got = gemv_triton(x, w, out_dtype=torch.float32)
    want = gemv_triton(x, w).float()
    rel = ((got - F.linear(x, w).float()).norm() / got.norm()).item()
    good = got.dtype == torch.float32 and torch.equal(got, want) and rel <= REL_TOL[dtype]
    print(f"lm head {vocab}x{hidden}, float32 out: equal to the cast {torch.equal(got, want)}, "
          f"rel l2 against cuBLAS {rel:.2e}  {'PASS' if good else 'FAIL'}", flush=True)  # fmt: skip
    return good


def _logits_timings(time_us: Callable[..., float]) -> None:
    """Batch-1 logits of the Llama-8B head: cuBLAS then the float32 cast, against the GEMV
    writing float32 itself (4 heads' weights in turn: past L2)."""
    heads = [_head(128256, 4096, torch.bfloat16, CUDA, seed) for seed in range(4)]
    cublas = time_us([lambda x=x, w=w: F.linear(x, w).float() for x, w in heads])
    gemv = time_us([lambda x=x, w=w: gemv_triton(x, w, out_dtype=torch.float32) for x, w in heads])
    print(f"lm head, batch 1, float32 logits: cuBLAS + cast {cublas:6.1f} us, GEMV {gemv:6.1f} us "
          f"({(gemv - cublas) / 1e3:+.3f} ms per step)")  # fmt: skip


def _rotary_case(
    heads: tuple[int, int, int], cache_dtype: torch.dtype, dtype: torch.dtype, dev: torch.device,
    seed: int, keep: bool = False,
) -> tuple[Callable[[], None], Callable[[], None], Callable[[], list[torch.Tensor]]]:  # fmt: skip
    """A one-token qkv projection (add + RMSNorm in front) finished two ways: the rotary kernel
    with its KV store after the GEMV (the path before the epilogue), and the GEMV's rotary
    epilogue (QKVRotary). Returns (run_before, run_epilogue, outputs of the last runs); `keep`
    also keeps the unrotated projection for results' eager rotation (not for timing)."""
    n_q, n_kv, dim = heads
    hidden = 4096 if dim == 128 else 48
    g = torch.Generator(device=dev).manual_seed(seed)

    rand = partial(_randn, g, dtype)

    w = rand((n_q + 2 * n_kv) * dim, hidden, scale=hidden**-0.5)
    norm, x, res = 1.0 + rand(hidden, scale=0.1), rand(1, hidden), rand(1, hidden)
    rope = RotaryEmbedding(dim, 8192, 500000.0)
    rope.materialize_buffers(dev)
    positions = torch.tensor([1234 if dim == 128 else 37], device=dev)
    slots = torch.tensor([21], device=dev)

    def cache() -> tuple[torch.Tensor, torch.Tensor]:
        shape = (8, 16, n_kv, dim)
        return (torch.zeros(shape, device=dev).to(cache_dtype),
                torch.zeros(shape, device=dev).to(cache_dtype))  # fmt: skip

    cache_a, cache_b = cache(), cache()
    outs: list[torch.Tensor] = [torch.empty(0)] * 3

    def qkv_gemv(rot: QKVRotary | None) -> torch.Tensor:
        return gemv_triton(
            x, w, pre=PRE_ADD_RMSNORM, norm_weight=norm, residual=res,
            residual_out=torch.empty_like(res), eps=1e-5, rotary=rot,
        )  # fmt: skip

    def today() -> None:
        qkv = qkv_gemv(None)
        if keep:
            outs[2] = qkv.clone()  # before rotation, for the eager reference
        q, k, v = qkv.split([n_q * dim, n_kv * dim, n_kv * dim], dim=-1)
        store = KVStore(v.view(1, n_kv, dim), cache_a, slots)
        rotary_triton(positions, q.view(1, n_q, dim), k.view(1, n_kv, dim), rope.cos_cache,
                      rope.sin_cache, store)  # fmt: skip
        outs[0] = qkv

    def epilogue() -> None:
        rot = QKVRotary(positions, rope.cos_cache, rope.sin_cache, n_q, n_kv, dim, cache_b, slots)
        outs[1] = qkv_gemv(rot)

    def results() -> list[torch.Tensor]:
        """The rotary kernel's qkv, the epilogue's, eager PyTorch's rotation of the unrotated
        qkv (every product rounded), the rounding bound of that rotation (below), then the
        two runs' caches."""
        q, k, v = outs[2].split([n_q * dim, n_kv * dim, n_kv * dim], dim=-1)
        cos = rope.cos_cache[positions].unsqueeze(1)
        sin = rope.sin_cache[positions].unsqueeze(1)
        rotated = [rotate_neox(t.view(1, -1, dim), cos, sin).view(1, -1) for t in (q, k)]
        eager = torch.cat([*rotated, v], dim=-1)
        # A rotated value is a +- b of two products of a pair (x1, x2) and (cos, sin); keeping
        # either product unrounded (an FMA) moves it by at most half an ulp of that product,
        # and the result's own rounding by half an ulp of it: a bf16 ulp is at most |x| / 128.
        pairs = torch.cat([q, k], dim=-1).float().abs().view(1, -1, 2, dim // 2).sum(2)
        bound = (pairs.repeat(1, 1, 2).view(1, -1) + torch.cat(rotated, -1).float().abs()) / 128
        return [outs[0], outs[1], eager, bound, *cache_a, *cache_b]

    return today, epilogue, results


def _check_rotary(
    heads: tuple[int, int, int], cache_dtype: torch.dtype, dtype: torch.dtype, dev: torch.device
) -> bool:
    """The epilogue against the rotary kernel: v and both caches' bytes equal; q and k within
    rounding of eager PyTorch's rotation, as the rotary kernel's are. On the GPU each kernel
    fuses one product of a rotation into an FMA (Triton's default fp fusion), not always the
    same one, so their q and k may differ in the last bits; under the interpreter they are
    equal."""
    today, epilogue, results = _rotary_case(heads, cache_dtype, dtype, dev, seed=3, keep=True)
    today()
    epilogue()
    want, got, eager, bound, _, v_want, k_got, v_got = results()
    n_q, n_kv, dim = heads
    qk = slice(0, (n_q + n_kv) * dim)
    v_same = torch.equal(want[:, qk.stop :], got[:, qk.stop :])
    errors = [(t[:, qk].float() - eager[:, qk].float()).abs() / bound for t in (want, got)]
    within = bool((errors[1] <= 1).all())
    k_stored = got[:, qk.stop - n_kv * dim : qk.stop].view(n_kv, dim)
    k_cache_ok = torch.equal(k_got[1, 5].float(), k_stored.to(cache_dtype).float())
    v_cache_ok = torch.equal(v_want.view(torch.uint8), v_got.view(torch.uint8))
    good = v_same and within and k_cache_ok and v_cache_ok
    off = [int((t[:, qk] != eager[:, qk]).sum()) for t in (want, got)]
    print(
        f"qkv + rotary epilogue {heads} {cache_dtype!s:20} v equal {v_same}, q/k within "
        f"rounding {within} ({int((want[:, qk] != got[:, qk]).sum())} of {qk.stop} differ "
        f"from the rotary kernel's), k cache = k {k_cache_ok}, v cache equal {v_cache_ok}; "
        f"against eager PyTorch: rotary kernel {off[0]} differ, worst {errors[0].max():.2f} "
        f"of the bound, epilogue {off[1]}, worst {errors[1].max():.2f}  "
        f"{'PASS' if good else 'FAIL'}",
        flush=True,
    )
    return good


def _rotary_timings(time_us: Callable[..., float]) -> None:
    """qkv GEMV + rotary kernel (with its KV store) against the GEMV with both in its epilogue,
    one Llama-8B layer, the weights rotated past L2 (16 layers' qkv)."""
    cases = [_rotary_case((32, 8, 128), torch.bfloat16, torch.bfloat16, CUDA, s) for s in range(16)]
    today = time_us([c[0] for c in cases])
    fused = time_us([c[1] for c in cases])
    print(
        f"\nqkv + add + norm, then rotary + KV store: {today:6.1f} us; rotary and the store in "
        f"the GEMV's epilogue: {fused:6.1f} us ({32 * (fused - today) / 1e3:+.3f} ms per step)"
    )


def _layer_chain(
    hbm_gbps: float,
    time_us: Callable[..., float],
    dev: torch.device = CUDA,
    dims: tuple[int, int, int] = (4096, 14336, 6144),  # hidden, intermediate, q + k + v
) -> None:
    """One Llama-8B decoder layer's projections at batch 1 (attention itself left out), as the
    unfused path runs them (7 kernels: add+norm, qkv, o, add+norm, gate_up, silu-mul, down)
    and fused (4 GEMVs), over 8 layers' weights in turn."""
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float16
    g = torch.Generator(device=dev).manual_seed(2)
    hidden, inter, qkv = dims

    rand = partial(_randn, g, dtype)

    layers = [
        {
            "qkv": rand(qkv, hidden, scale=hidden**-0.5),
            "o": rand(hidden, hidden, scale=hidden**-0.5),
            "gate_up": rand(2 * inter, hidden, scale=hidden**-0.5),
            "down": rand(hidden, inter, scale=inter**-0.5),
            "norm1": 1.0 + rand(hidden, scale=0.1),
            "norm2": 1.0 + rand(hidden, scale=0.1),
        }
        for _ in range(8)
    ]
    x, attn = rand(1, hidden), rand(1, hidden)
    res_a, res_b = rand(1, hidden), rand(1, hidden)

    def unfused(w: dict[str, torch.Tensor]) -> Callable[[], None]:
        def fn() -> None:
            h = rms_norm_triton(x, w["norm1"], 1e-5, res_a)
            F.linear(h, w["qkv"])
            o = F.linear(attn, w["o"])
            h = rms_norm_triton(o, w["norm2"], 1e-5, res_a)
            F.linear(silu_and_mul_triton(F.linear(h, w["gate_up"])), w["down"])

        return fn

    def fused(
        w: dict[str, torch.Tensor], tuned: dict[str, tuple[int, int, int, int, int]] | None = None
    ) -> Callable[[], None]:
        def gemv(name: str, x: torch.Tensor, pre: int = PRE_NONE, **kw: Any) -> torch.Tensor:
            if tuned is not None:
                block_n, block_k, warps, stages, fold = tuned[name]
                kw.update(block_n=block_n, block_k=block_k, num_warps=warps, num_stages=stages,
                          fold=fold)  # fmt: skip
            return gemv_triton(x, w[name], pre=pre, eps=1e-5, **kw)

        def fn() -> None:
            gemv("qkv", x, PRE_ADD_RMSNORM, norm_weight=w["norm1"], residual=res_a,
                 residual_out=res_b)  # fmt: skip
            o = gemv("o", attn)
            gu = gemv("gate_up", o, PRE_ADD_RMSNORM, norm_weight=w["norm2"], residual=res_b,
                      residual_out=res_a)  # fmt: skip
            gemv("down", gu, PRE_SILU_MUL)

        return fn

    nbytes = sum(t.numel() * 2 for t in layers[0].values())
    base = time_us([unfused(w) for w in layers])
    variants = [
        ("unfused (7 kernels)", base),
        ("fused GEMVs (4 kernels)", time_us([fused(w) for w in layers])),
        ("fused GEMVs, unfolded", time_us([fused(w, LAYER_CONFIGS) for w in layers])),
        ("fused, folded, sweep's best", time_us([fused(w, LAYER_FOLDED_BEST) for w in layers])),
    ]
    print(f"\none decoder layer's projections, batch 1 ({nbytes / 1e6:.0f} MB of weights):")
    for label, us in variants:
        gbps = nbytes / us / 1e3
        print(
            f"  {label:30} {us:8.1f} us  {gbps:6.0f} GB/s  {gbps / hbm_gbps:5.0%} of HBM"
            f"  x 32 layers: {32 * (us - base) / 1e3:+.2f} ms per step"
        )
