"""The `fused` section of gpu_check.py: the Triton RMSNorm (plain and Gemma's 1 + weight) /
rotary / SiLU-mul kernels against the PyTorch layers they replace, on CUDA, for each activation
dtype; and the rotary kernel storing k and v in the cache (same dtype, fp8) byte for byte as the
reference writer."""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from ember.layers.metadata import KVStore
from ember.layers.norm import GemmaRMSNorm
from ember.layers.rotary import RotaryEmbedding, rotate_neox
from ember.ops.attention_ref import write_kv
from ember.ops.triton_fused import rms_norm_triton, rotary_triton, silu_and_mul_triton

# Qwen2.5 / Qwen3's documented YaRN setting.
QWEN_YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
# Allowed max abs error: one rounding of the dtype on values of magnitude ~4.
TOL = {torch.bfloat16: 6e-2, torch.float16: 8e-3, torch.float32: 1e-5}


def _ref_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def _row(name: str, dtype: torch.dtype, err: float) -> bool:
    ok = err <= TOL[dtype]
    print(
        f"{name:34} {str(dtype).removeprefix('torch.'):9} {err:10.2e}  {'PASS' if ok else 'FAIL'}"
    )
    return ok


def _rotary_store(
    rope: RotaryEmbedding,
    pos: torch.Tensor,
    qkv: torch.Tensor,
    heads: tuple[int, int, int],
    cache_dtype: torch.dtype,
    g: torch.Generator,
) -> bool:
    """rotary_triton with a KVStore: q and k rotated as without one, and the cache holding
    exactly what the reference writer stores from that k and v (padding slot -1 untouched)."""
    hq, hkv, d = heads
    tokens = qkv.shape[0]
    qkv = qkv.clone()
    q = qkv[:, : hq * d].view(tokens, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(tokens, hkv, d)
    v = qkv[:, (hq + hkv) * d :].view(tokens, hkv, d)
    q_plain, k_plain = q.clone(), k.clone()
    rotary_triton(pos, q_plain, k_plain, rope.cos_cache, rope.sin_cache)
    bs = 16
    blocks = -(-tokens // bs) + 2
    slots = torch.randperm(blocks * bs, device=qkv.device, generator=g)[:tokens]
    slots[tokens // 2] = -1
    keep = slots >= 0
    shape = (blocks, bs, hkv, d)
    caches = [torch.zeros(shape, device=qkv.device).to(cache_dtype) for _ in range(4)]
    rotary_triton(
        pos, q, k, rope.cos_cache, rope.sin_cache, KVStore(v, (caches[0], caches[1]), slots)
    )
    write_kv(caches[2], caches[3], k[keep], v[keep], slots[keep])
    same = all(
        torch.equal(a.view(torch.uint8), b.view(torch.uint8))
        for a, b in ((caches[0], caches[2]), (caches[1], caches[3]))
    )
    err = 0.0 if same else float("inf")
    err = max(err, (q - q_plain).abs().max().item(), (k - k_plain).abs().max().item())
    name = f"rotary+store {tokens}t {hkv}x{d} {str(cache_dtype).removeprefix('torch.')}"
    return _row(name[:34], qkv.dtype, err)


def section_fused(args: argparse.Namespace) -> bool:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    ok = True
    print(f"{'case':34} {'dtype':9} {'max abs':>10}")
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for tokens, hidden in ((1, 4096), (7, 896), (300, 5376)):
            x = torch.randn(tokens, hidden, device=dev, generator=g).to(dtype)
            r = torch.randn(tokens, hidden, device=dev, generator=g).to(dtype)
            w = (1 + 0.1 * torch.randn(hidden, device=dev, generator=g)).to(dtype)
            err = (rms_norm_triton(x, w, 1e-5) - _ref_norm(x, w, 1e-5)).abs().max().item()
            ok &= _row(f"rmsnorm {tokens}x{hidden}", dtype, err)
            res = r.clone()
            out = rms_norm_triton(x, w, 1e-5, res)
            ref_sum = x + r
            err = max(
                (out - _ref_norm(ref_sum, w, 1e-5)).abs().max().item(),
                (res - ref_sum).abs().max().item(),
            )
            ok &= _row(f"rmsnorm+residual {tokens}x{hidden}", dtype, err)
            # Gemma's (1 + weight) norm, against its torch path (all float32, one rounding).
            gemma = GemmaRMSNorm(hidden, 1e-6).to(dev, dtype)
            gemma.weight.copy_(w - 1)
            diff = rms_norm_triton(x, gemma.weight, 1e-6, weight_offset=1.0) - gemma._norm(x)
            ok &= _row(f"gemma rmsnorm {tokens}x{hidden}", dtype, diff.abs().max().item())
        for tokens, hq, hkv, d, scaling in (
            (1, 32, 8, 128, None),
            (9, 14, 2, 64, None),
            (130, 16, 8, 256, None),
            (37, 28, 4, 128, QWEN_YARN),  # cos/sin scaled past 1 by the attention factor
        ):
            rope = RotaryEmbedding(d, 4096, 500000.0, scaling).to(dev)
            qkv = torch.randn(tokens, (hq + 2 * hkv) * d, device=dev, generator=g).to(dtype)
            pos = torch.randint(0, 4096, (tokens,), device=dev, generator=g)
            q = qkv[:, : hq * d].view(tokens, hq, d)
            k = qkv[:, hq * d : (hq + hkv) * d].view(tokens, hkv, d)
            cos = rope.cos_cache[pos].unsqueeze(1)
            sin = rope.sin_cache[pos].unsqueeze(1)
            q_ref, k_ref = rotate_neox(q.clone(), cos, sin), rotate_neox(k.clone(), cos, sin)
            rotary_triton(pos, q, k, rope.cos_cache, rope.sin_cache)
            err = max((q - q_ref).abs().max().item(), (k - k_ref).abs().max().item())
            yarn = " yarn" if scaling else ""
            ok &= _row(f"rotary {tokens}t {hq}/{hkv}x{d}{yarn}", dtype, err)
            for cache_dtype in (dtype, torch.float8_e4m3fn):
                ok &= _rotary_store(rope, pos, qkv, (hq, hkv, d), cache_dtype, g)
        for tokens, d in ((1, 14336), (33, 4864), (257, 128)):
            x = torch.randn(tokens, 2 * d, device=dev, generator=g).to(dtype)
            gate, up = x.chunk(2, dim=-1)
            err = (silu_and_mul_triton(x) - F.silu(gate) * up).abs().max().item()
            ok &= _row(f"silu_and_mul {tokens}x{d}", dtype, err)
    return ok


def section_rotary_store(args: argparse.Namespace) -> bool:
    """µs per layer, graph-replayed, Llama-3.1-8B heads, bf16 cache: rotary then the KV write
    (two launches) against the rotary kernel storing k and v itself (one)."""
    print(f"{'tokens':>6} {'rotary + write us':>18} {'rotary+store us':>16} {'saved':>7}")
    for tokens in (1, 16, 64, 256, 8192):
        us_two, us_one = _rotary_store_us(tokens)
        print(f"{tokens:>6} {us_two:>18.2f} {us_one:>16.2f} {us_two - us_one:>+7.2f}", flush=True)
    return True


def _rotary_store_us(tokens: int) -> tuple[float, float]:
    from ember.ops.triton_kv import write_kv_triton
    from scripts.gpu_check import time_us

    dev = torch.device("cuda")
    hq, hkv, d, bs = 32, 8, 128, 16
    rope = RotaryEmbedding(d, 8192, 500000.0).to(dev)
    qkv = torch.randn(tokens, (hq + 2 * hkv) * d, device=dev, dtype=torch.bfloat16)
    q = qkv[:, : hq * d].view(tokens, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(tokens, hkv, d)
    v = qkv[:, (hq + hkv) * d :].view(tokens, hkv, d)
    pos = torch.arange(tokens, device=dev)
    blocks = -(-tokens // bs) + 1
    k_cache = torch.zeros(blocks, bs, hkv, d, device=dev, dtype=torch.bfloat16)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.arange(tokens, device=dev)
    store = KVStore(v, (k_cache, v_cache), slots)

    def two() -> None:
        rotary_triton(pos, q, k, rope.cos_cache, rope.sin_cache)
        write_kv_triton(k_cache, v_cache, k, v, slots)

    def one() -> None:
        rotary_triton(pos, q, k, rope.cos_cache, rope.sin_cache, store)

    # Eight layers' worth per replay, as in a step (same buffers: launch-bound either way);
    # time_us gives µs per call.
    return time_us([two] * 8), time_us([one] * 8)
