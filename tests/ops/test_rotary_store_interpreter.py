"""The rotary kernel that also stores k and v in the cache (`rotary_triton(kv_store=...)`, one
launch instead of rotary + KV write) against the reference layers (rotate, then write_kv) under
Triton's interpreter: strided q/k/v views of one fused projection, padding slots (-1) never
stored, more KV heads than one pass of the head loop, YaRN's cos/sin tables (scaled past 1 by
its attention factor), and an fp8 cache stored byte for byte as `write_kv_triton` stores it (the
interpreter rounds some fp8 casts unlike the GPU, so fp8 is compared between the two kernels
here; gpu_check's fused section compares it with the reference on the GPU). Skipped where
Triton is not installed (CI)."""

from __future__ import annotations

from tests.ops.test_triton_interpreter import (  # noqa: F401 (pytestmark: the same skips)
    pytestmark,
    run_interpreted,
)

_CHECK = r"""
import torch
from ember.layers.metadata import KVStore
from ember.layers.rotary import RotaryEmbedding, rotate_neox
from ember.ops.attention_ref import write_kv
from ember.ops.triton_fused import rotary_triton
from ember.ops.triton_kv import write_kv_triton


def same(a, b):
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def check(tokens, hq, hkv, d, cache_dtype, seed, scaling=None):
    g = torch.Generator().manual_seed(seed)
    rope = RotaryEmbedding(d, 512, 10000.0, scaling)
    qkv = torch.randn(tokens, (hq + 2 * hkv) * d, generator=g).to(torch.float16) * 4
    q = qkv[:, : hq * d].view(tokens, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(tokens, hkv, d)
    v = qkv[:, (hq + hkv) * d :].view(tokens, hkv, d)
    pos = torch.randint(0, 512, (tokens,), generator=g)
    blocks, bs = 6, 4
    slots = torch.randperm(blocks * bs, generator=g)[:tokens]
    slots[tokens // 2] = -1  # a padding token
    keep = slots >= 0
    shape = (blocks, bs, hkv, d)
    want_k = torch.zeros(shape, dtype=cache_dtype)
    want_v = torch.zeros(shape, dtype=cache_dtype)
    cos = rope.cos_cache[pos].unsqueeze(1)
    sin = rope.sin_cache[pos].unsqueeze(1)
    q_ref, k_ref = rotate_neox(q.clone(), cos, sin), rotate_neox(k.clone(), cos, sin)
    writer = write_kv_triton if cache_dtype.itemsize == 1 else write_kv
    writer(want_k, want_v, k_ref[keep], v[keep], slots[keep])
    got_k = torch.zeros(shape, dtype=cache_dtype)
    got_v = torch.zeros(shape, dtype=cache_dtype)
    rotary_triton(pos, q, k, rope.cos_cache, rope.sin_cache, KVStore(v, (got_k, got_v), slots))
    assert torch.equal(q, q_ref) and torch.equal(k, k_ref), (tokens, hq, hkv, d)
    assert same(got_k, want_k) and same(got_v, want_v), (tokens, hq, hkv, d, cache_dtype)

check(5, 4, 2, 16, torch.float16, 0)
check(9, 8, 8, 64, torch.float16, 1)
check(3, 32, 8, 128, torch.float16, 2)
check(7, 4, 2, 16, torch.float8_e4m3fn, 3)
check(6, 8, 8, 64, torch.float8_e5m2, 4)
# YaRN: tables scaled by its attention factor (|cos|, |sin| up to 1.23 here).
yarn = {"rope_type": "yarn", "factor": 10.0, "original_max_position_embeddings": 64}
check(9, 8, 8, 64, torch.float16, 5, yarn)
print("ok")
"""


def test_rotary_kernel_stores_k_and_v_as_write_kv_does() -> None:
    run_interpreted(_CHECK)
