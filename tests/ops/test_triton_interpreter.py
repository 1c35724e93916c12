"""The Triton attention kernels on CPU under Triton's interpreter (TRITON_INTERPRET=1), against the
reference, for the tiny test models' shapes (4 query heads, 2 KV heads, head_dim 16, fp32):
decode with split-KV counts frozen from a longer max length than the batch has (as under CUDA
graphs, so many pieces see no keys; the last piece to arrive merges and leaves its counter zero),
chunked prefill over a cached context mixed with decodes, large score magnitudes, decode's
one-loop variant (KernelConfig.one_loop), and fp8 decode with V widened in registers
(KernelConfig.widen_v_early). Skipped where Triton is not installed.

The interpreter is chosen when the kernels are decorated, so the check runs in a fresh process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Triton 3.6's interpreter reads loop bounds with int() of 1-element arrays, which numpy 2.4
# refuses ("only 0-dimensional arrays can be converted"); numpy 2.2 runs it.
_NUMPY = tuple(int(p) for p in np.__version__.split(".")[:2])

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("triton") is None, reason="Triton is not installed"
    ),
    pytest.mark.skipif(
        _NUMPY >= (2, 4), reason=f"Triton's interpreter fails on numpy {np.__version__}"
    ),
]

_CHECK = r"""
import torch
from ember.layers.metadata import AttentionMetadata
from ember.ops.attention_ref import paged_attention_ref, write_kv
from ember.ops.triton_attention import KernelConfig, kv_splits_for, paged_attention_into
from ember.ops.triton_kv import write_kv_triton

HQ, HKV, D, BS = 4, 2, 16, 16


ONE_LOOP = KernelConfig(16, 32, 4, 2, one_loop=True)


def check(seqs, splits, mag, seed, cfg=None, kv_dtype=torch.float32, tol=1e-4):
    g = torch.Generator().manual_seed(seed)
    needed = [-(-n // BS) for _, n in seqs]
    pool = torch.randperm(sum(needed) + 3, generator=g)
    tables = torch.zeros(len(seqs), max(needed) + 1, dtype=torch.int32)
    used = 0
    for i, n in enumerate(needed):
        tables[i, :n] = pool[used : used + n]
        used += n
    starts, old, new = [0], [], []
    for i, (q_len, seq_len) in enumerate(seqs):
        starts.append(starts[-1] + q_len)
        for pos in range(seq_len):
            slot = int(tables[i, pos // BS]) * BS + pos % BS
            (new if pos >= seq_len - q_len else old).append(slot)
    md = AttentionMetadata(
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor([n for _, n in seqs], dtype=torch.int32),
        block_tables=tables,
        slot_mapping=torch.tensor(new, dtype=torch.int64),
        max_query_len=max(q for q, _ in seqs),
        max_seq_len=max(n for _, n in seqs),
        query_start_loc_cpu=starts,
        seq_lens_cpu=[n for _, n in seqs],
    )
    shape = (len(pool), BS, HKV, D)
    k_cache = torch.full(shape, float("nan")).to(kv_dtype)
    v_cache = torch.full(shape, float("nan")).to(kv_dtype)
    if old:
        slots = torch.tensor(old, dtype=torch.int64)
        kv = torch.randn(2, len(old), HKV, D, generator=g)
        write_kv(k_cache, v_cache, kv[0] * mag, kv[1], slots)
    t = starts[-1]
    q = torch.randn(t, HQ, D, generator=g) * mag
    k = torch.randn(t, HKV, D, generator=g) * mag
    v = torch.randn(t, HKV, D, generator=g)
    write_kv_triton(k_cache, v_cache, k, v, md.slot_mapping)
    ref = paged_attention_ref(q, k_cache, v_cache, md, D**-0.5)
    out = torch.full_like(q, float("nan"))
    paged_attention_into(
        out, q, k_cache, v_cache, md, D**-0.5, num_kv_splits=splits, decode_config=cfg
    )
    err = (out - ref).abs().max().item()
    assert err <= tol * mag, (seqs, splits, mag, cfg, err)
    return out


graph_splits = kv_splits_for(8, HKV, 512, torch.device("cpu"))  # 6 seqs padded to 8, max len 512
assert graph_splits > 1
lens = [130, 17, 40, 70, 3, 5]
for step, mag in ((0, 1.0), (21, 1.0), (21, 20.0)):
    for splits in (1, 3, graph_splits, 8):
        check([(1, n + step + 1) for n in lens], splits, mag, seed=step)
for ctx, chunk in ((0, 32), (32, 32), (96, 32), (113, 17), (40, 1)):
    check([(1, 60), (chunk, ctx + chunk), (1, 9)], None, 1.0, seed=ctx)
    check([(chunk, ctx + chunk), (1, 150)], None, 20.0, seed=ctx + 1)
# Decode's one key loop: keys past each sequence's end come from block 0 (NaN here) and drop.
for splits in (1, 3, graph_splits):
    check([(1, n + 1) for n in lens], splits, 20.0, seed=splits, cfg=ONE_LOOP)
check([(1, 60), (32, 64), (1, 9)], None, 1.0, seed=5, cfg=ONE_LOOP)
# fp8 decode with V widened in registers (v_scale 1.0): the same bytes as the default widening.
for splits in (1, 3):
    outs = [
        check([(1, n + 1) for n in lens], splits, 1.0, seed=7, kv_dtype=torch.float8_e4m3fn,
              tol=1e-2, cfg=KernelConfig(16, 32, 4, 3, one_loop=True, widen_v_early=early))
        for early in (False, True)
    ]
    assert torch.equal(outs[0], outs[1]), splits
# Every split launch left its arrival counters zero for the next (the last piece resets them).
from ember.ops.triton_kv import arrival_counts
assert not arrival_counts(torch.device("cpu"), "attention", 1).any()
print("ok")
"""


def run_interpreted(script: str) -> None:
    """Run `script` in a fresh process under Triton's interpreter; it must print "ok" last."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=280
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-4000:]


def test_attention_kernels_match_reference_under_interpreter() -> None:
    run_interpreted(_CHECK)
