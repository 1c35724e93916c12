"""gpu_check's decode-fused sections: the one-launch decode kernel (ember/ops/triton_decode.py:
rotary + KV store + attention + split merge) on the GPU.

- `decode-fused`: against the rotary kernel's store and paged_attention_ref for Llama-8B, Qwen
  (group 7, head_dim 64), Gemma 2 (head_dim 256, softcap) heads; bf16, fp16, fp32 and fp8
  caches; split counts from 1 to 32 with many empty pieces; a padding row (slot -1). The cache
  must match byte for byte (fp32: within 1e-6), the output the reference within the dtype's
  tolerance, the merge counters must be back at 0, and q/k untouched.
- `decode-fused-time`: µs a layer, graph-replayed (Llama-8B heads, bf16 and fp8 caches), of
  today's three launches (rotary + store, attention, merge) against the one.
"""

from __future__ import annotations

import argparse

import torch

from ember.layers.metadata import AttentionMetadata, KVStore
from ember.layers.rotary import RotaryEmbedding
from ember.ops.attention_ref import paged_attention_ref
from ember.ops.triton_attention import kv_splits_for, paged_attention_into
from ember.ops.triton_decode import _counters, decode_attention_triton
from ember.ops.triton_fused import rotary_triton

CUDA = torch.device("cuda")
TOL = {torch.bfloat16: 3e-2, torch.float16: 4e-3, torch.float32: 2e-4}
FP8 = torch.float8_e4m3fn
# (name, lengths, (Hq, Hkv, D), activation dtype, cache dtype, splits or None (auto), softcap)
CASES = [
    ("llama b4 split 1", [1, 100, 517, 2048], (32, 8, 128), torch.bfloat16, None, 1, None),
    ("llama b4 split 8", [1, 100, 517, 2048], (32, 8, 128), torch.bfloat16, None, 8, None),
    ("llama b1 split 32 (graph)", [300], (32, 8, 128), torch.bfloat16, None, 32, None),
    ("llama b2 auto", [4000, 129], (32, 8, 128), torch.bfloat16, None, None, None),
    (
        "llama b40 auto",
        [17 * i + 1 for i in range(40)],
        (32, 8, 128),
        torch.bfloat16,
        None,
        None,
        None,
    ),
    ("llama fp16 split 4", [33, 1000, 7], (32, 8, 128), torch.float16, None, 4, None),
    ("llama fp32 split 3", [33, 300, 7], (32, 8, 128), torch.float32, None, 3, None),
    ("llama fp8 split 1", [1, 100, 517, 2048], (32, 8, 128), torch.bfloat16, FP8, 1, None),
    ("llama fp8 split 16", [1, 100, 517, 2048], (32, 8, 128), torch.bfloat16, FP8, 16, None),
    ("qwen g7 d64 split 6", [12, 700, 3], (14, 2, 64), torch.bfloat16, None, 6, None),
    ("qwen g7 d64 split 1", [12, 700, 3], (14, 2, 64), torch.bfloat16, None, 1, None),
    ("gemma2 d256 cap split 4", [50, 900, 2], (16, 8, 256), torch.bfloat16, None, 4, 50.0),
    ("gemma2 d256 cap fp8", [50, 900, 2], (16, 8, 256), torch.bfloat16, FP8, 1, 50.0),
]
BS = 16


def _setup(
    lens: list[int], heads: tuple[int, int, int], dtype: torch.dtype, cache_dtype: torch.dtype,
    g: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata]:  # fmt: skip
    """Old keys/values in shuffled blocks, the step's fused qkv, positions and metadata (the
    last row pads a graph batch: slot -1)."""
    hq, hkv, d = heads
    s = len(lens)
    need = [-(-n // BS) for n in lens]
    blocks = sum(need) + 2
    tables = torch.zeros(s, max(need) + 1, dtype=torch.int32)
    pool = torch.randperm(blocks, generator=g)
    used = 0
    for i, n in enumerate(need):
        tables[i, :n] = pool[used : used + n]
        used += n
    shape = (blocks, BS, hkv, d)
    old_k = (torch.randn(shape, generator=g) * 2).to(dtype).to(cache_dtype).to(CUDA)
    old_v = (torch.randn(shape, generator=g) * 2).to(dtype).to(cache_dtype).to(CUDA)
    qkv = (torch.randn(s, (hq + 2 * hkv) * d, generator=g) * 3).to(dtype).to(CUDA)
    pos = torch.tensor([n - 1 for n in lens])
    slots = torch.tensor(
        [int(tables[i, p // BS]) * BS + p % BS for i, p in enumerate(pos.tolist())]
    )
    slots[-1] = -1
    md = AttentionMetadata(
        query_start_loc=torch.arange(s + 1, dtype=torch.int32, device=CUDA),
        seq_lens=torch.tensor(lens, dtype=torch.int32, device=CUDA),
        block_tables=tables.to(CUDA),
        slot_mapping=slots.to(CUDA),
        max_query_len=1,
        max_seq_len=max(lens),
        query_start_loc_cpu=list(range(s + 1)),
        seq_lens_cpu=list(lens),
    )
    return old_k, old_v, qkv, pos.to(CUDA), slots.to(CUDA), md


def _check(case: tuple, seed: int) -> tuple[bool, str]:  # type: ignore[type-arg]
    name, lens, heads, dtype, cache_dtype, splits, softcap = case
    cache_dtype = cache_dtype or dtype
    hq, hkv, d = heads
    g = torch.Generator().manual_seed(seed)
    old_k, old_v, qkv, pos, slots, md = _setup(lens, heads, dtype, cache_dtype, g)
    s = len(lens)
    q = qkv[:, : hq * d].view(s, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(s, hkv, d)
    v = qkv[:, (hq + hkv) * d :].view(s, hkv, d)
    rope = RotaryEmbedding(d, 8192, 10000.0).to(CUDA)
    # The expected cache: the rotary kernel's own store (byte-equal to the reference writer's,
    # gpu_check's fused section; its rotation is within an ulp of the PyTorch layer's).
    q_ref, k_ref = q.clone(), k.clone()
    want_k, want_v = old_k.clone(), old_v.clone()
    store = KVStore(v, (want_k, want_v), slots)
    rotary_triton(pos, q_ref, k_ref, rope.cos_cache, rope.sin_cache, store)
    got_k, got_v = old_k.clone(), old_v.clone()
    q_before, k_before = q.clone(), k.clone()
    scale = d**-0.5
    out = decode_attention_triton(
        pos, q, k, v, rope.cos_cache, rope.sin_cache, (got_k, got_v), md, scale, softcap,
        num_kv_splits=splits,
    )  # fmt: skip
    torch.cuda.synchronize()
    if dtype == torch.float32:  # fp32 products may be contracted into FMAs either way
        same_cache = torch.allclose(got_k, want_k, rtol=1e-6, atol=1e-6)
        same_cache &= torch.equal(got_v, want_v)
    else:
        same_cache = torch.equal(got_k.view(torch.uint8), want_k.view(torch.uint8))
        same_cache &= torch.equal(got_v.view(torch.uint8), want_v.view(torch.uint8))
    untouched = torch.equal(q, q_before) and torch.equal(k, k_before)
    counters = int(_counters(CUDA).abs().sum())
    ref = paged_attention_ref(q_ref, want_k, want_v, md, scale, None, softcap)
    diff = (out.float() - ref.float()).abs().max().item()
    rel = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    ok = same_cache and untouched and counters == 0 and rel <= TOL[dtype]
    notes = "" if same_cache else " cache differs"
    notes += "" if untouched else " q/k modified"
    notes += "" if counters == 0 else f" counters {counters}"
    kind = str(cache_dtype).removeprefix("torch.")[:9]
    line = f"{name:28} {kind:9} {diff:10.2e} {rel:10.2e}  {'PASS' if ok else 'FAIL'}{notes}"
    return ok, line


def section_decode_fused(args: argparse.Namespace) -> bool:
    print(f"{'case':28} {'cache':9} {'max abs':>10} {'rel l2':>10}")
    ok_all = True
    for i, case in enumerate(CASES):
        ok, line = _check(case, i)
        print(line, flush=True)
        ok_all &= ok
    print(f"decode-fused: {'all PASS' if ok_all else 'FAILURES'}")
    return ok_all


def _timed(batch: int, ctx: int, cache_dtype: torch.dtype) -> tuple[float, float, int]:
    from scripts.gpu_check import time_us

    hq, hkv, d = 32, 8, 128
    g = torch.Generator().manual_seed(0)
    old_k, old_v, qkv, pos, slots, md = _setup([ctx] * batch, (hq, hkv, d), torch.bfloat16,
                                               cache_dtype, g)  # fmt: skip
    q = qkv[:, : hq * d].view(batch, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(batch, hkv, d)
    v = qkv[:, (hq + hkv) * d :].view(batch, hkv, d)
    rope = RotaryEmbedding(d, 8192, 500000.0).to(CUDA)
    splits = kv_splits_for(batch, hkv, 8192, CUDA)  # as captured with an 8192-token max length
    out = torch.empty_like(q)
    store = KVStore(v, (old_k, old_v), slots)

    def three() -> None:
        rotary_triton(pos, q, k, rope.cos_cache, rope.sin_cache, store)
        paged_attention_into(q, old_k, old_v, out, md, d**-0.5, num_kv_splits=splits)

    def one() -> None:
        decode_attention_triton(
            pos, q, k, v, rope.cos_cache, rope.sin_cache, (old_k, old_v), md, d**-0.5,
            num_kv_splits=splits,
        )  # fmt: skip

    return time_us([three] * 4), time_us([one] * 4), splits


def section_decode_fused_time(args: argparse.Namespace) -> bool:
    print(
        f"{'cache':6} {'batch':>5} {'ctx':>5} {'splits':>6} {'3 launches us':>14} {'1 launch us':>12} {'saved':>7}"
    )
    for cache_dtype, label in ((torch.bfloat16, "bf16"), (FP8, "fp8")):
        for batch, ctx in ((1, 256), (1, 2048), (1, 8192), (8, 512), (64, 640), (256, 640)):
            three, one, splits = _timed(batch, ctx, cache_dtype)
            print(
                f"{label:6} {batch:>5} {ctx:>5} {splits:>6} {three:>14.2f} {one:>12.2f} {three - one:>+7.2f}",
                flush=True,
            )
    return True
