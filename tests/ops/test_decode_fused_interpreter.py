"""The one-launch decode kernel (`triton_decode.decode_attention_triton`: rotary + KV store +
attention + split merge) against the reference layers (rotate, write_kv, paged_attention_ref)
under Triton's interpreter: fp32/fp16/bf16, split counts frozen from a longer max length than
the batch has (many pieces see no keys; the counters must be back at 0 after each call), a
padding row (slot -1, never stored), GQA groups of 2 and 7, logit softcap, the one-loop tiles,
and bf16 and fp8 caches (compared with the rotary kernel's store, byte for byte: the interpreter
rounds some bf16 and fp8 casts unlike the GPU and torch, and its bf16 dot products are wrong, so
bf16 outputs are not compared here; gpu_check compares everything with the reference on the
GPU). Skipped where Triton is not installed (CI)."""

from __future__ import annotations

from tests.ops.test_triton_interpreter import (  # noqa: F401 (pytestmark: the same skips)
    pytestmark,
    run_interpreted,
)

_CHECK = r"""
import torch
from ember.layers.metadata import AttentionMetadata, KVStore
from ember.layers.rotary import RotaryEmbedding, _rotate
from ember.ops.attention_ref import paged_attention_ref, write_kv
from ember.ops.triton_attention import KernelConfig
from ember.ops.triton_decode import _counters, decode_attention_triton
from ember.ops.triton_fused import rotary_triton

BS = 4
TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}


def same(a, b):
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def check(lens, hq, hkv, d, dtype, splits, seed, softcap=None, cfg=None, cache_dtype=None):
    g = torch.Generator().manual_seed(seed)
    cache_dtype = cache_dtype or dtype
    s = len(lens)
    rope = RotaryEmbedding(d, 1024, 10000.0)
    need = [-(-n // BS) for n in lens]
    blocks = sum(need) + 2
    tables = torch.zeros(s, max(need) + 2, dtype=torch.int32)
    pool = torch.randperm(blocks, generator=g)
    used = 0
    for i, n in enumerate(need):
        tables[i, :n] = pool[used : used + n]
        used += n
    shape = (blocks, BS, hkv, d)
    old_k = (torch.randn(shape, generator=g) * 2).to(cache_dtype)
    old_v = (torch.randn(shape, generator=g) * 2).to(cache_dtype)
    qkv = (torch.randn(s, (hq + 2 * hkv) * d, generator=g) * 3).to(dtype)
    q = qkv[:, : hq * d].view(s, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(s, hkv, d)
    v = qkv[:, (hq + hkv) * d :].view(s, hkv, d)
    pos = torch.tensor([n - 1 for n in lens])
    slots = torch.tensor([int(tables[i, p // BS]) * BS + p % BS for i, p in enumerate(pos.tolist())])
    slots[-1] = -1  # the last row pads a graph batch: never stored
    md = AttentionMetadata(
        query_start_loc=torch.arange(s + 1, dtype=torch.int32),
        seq_lens=torch.tensor(lens, dtype=torch.int32),
        block_tables=tables,
        slot_mapping=slots,
        max_query_len=1,
        max_seq_len=max(lens),
        query_start_loc_cpu=list(range(s + 1)),
        seq_lens_cpu=list(lens),
    )
    want_k, want_v = old_k.clone(), old_v.clone()
    if dtype in (torch.float32, torch.float16) and cache_dtype == dtype:
        cos, sin = rope.cos_cache[pos].unsqueeze(1), rope.sin_cache[pos].unsqueeze(1)
        q_ref, k_ref = _rotate(q.clone(), cos, sin), _rotate(k.clone(), cos, sin)
        keep = slots >= 0
        write_kv(want_k, want_v, k_ref[keep], v[keep], slots[keep])
    else:  # bf16 and fp8: the rotary kernel's own rounding, under the same interpreter
        q_ref, k_ref = q.clone(), k.clone()
        rotary_triton(pos, q_ref, k_ref, rope.cos_cache, rope.sin_cache,
                      KVStore(v, (want_k, want_v), slots))
    scale = d ** -0.5
    q_before, k_before = q.clone(), k.clone()
    got_k, got_v = old_k.clone(), old_v.clone()
    out = decode_attention_triton(pos, q, k, v, rope.cos_cache, rope.sin_cache, (got_k, got_v),
                                  md, scale, softcap, num_kv_splits=splits, config=cfg)
    assert same(got_k, want_k) and same(got_v, want_v), (lens, splits, "cache")
    assert torch.equal(q, q_before) and torch.equal(k, k_before), "q and k must be left as given"
    assert int(_counters(torch.device("cpu")).abs().sum()) == 0, "counters not reset"
    if dtype == torch.bfloat16:
        return  # the interpreter's bf16 dot products are wrong (the attention kernel's too)
    ref = paged_attention_ref(q_ref.to(dtype), want_k, want_v, md, scale, None, softcap)
    err = (out.float() - ref.float()).abs().max().item()
    assert err <= TOL[dtype] * max(1.0, ref.float().abs().max().item()), (lens, splits, err)


check([1, 7, 33, 2], 4, 2, 16, torch.float32, 1, 0)
check([1, 7, 33, 2], 4, 2, 16, torch.float32, 8, 1)  # pieces of 1 tile: most see no keys
check([64, 5, 130, 1], 4, 2, 16, torch.float32, 3, 2, softcap=5.0)
check([9, 40, 1], 4, 2, 16, torch.float32, 4, 3, cfg=KernelConfig(16, 32, 4, 2, one_loop=True))
check([9, 40, 1], 4, 2, 16, torch.float32, 1, 4, cfg=KernelConfig(16, 16, 4, 2, one_loop=True))
check([50, 3, 1], 14, 2, 32, torch.float16, 5, 5)  # Qwen-like group of 7
check([50, 3, 1], 14, 2, 32, torch.bfloat16, 1, 6)
check([21, 70, 2], 4, 2, 32, torch.float16, 2, 7, cache_dtype=torch.float8_e4m3fn)
check([21, 70, 2], 4, 2, 32, torch.bfloat16, 2, 8, cache_dtype=torch.float8_e4m3fn)
print("ok")
"""


def test_decode_kernel_matches_reference_under_interpreter() -> None:
    run_interpreted(_CHECK)
