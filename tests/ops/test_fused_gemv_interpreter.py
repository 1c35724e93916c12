"""The fused small-batch GEMV path of the Llama-family layers (EMBER_FUSED_GEMV, layers/
small_batch.py) generates what the usual path generates: the tiny Llama on CPU, its decode steps
through the Triton GEMVs under Triton's interpreter. Skipped where Triton is not installed (CI)."""

from __future__ import annotations

from tests.ops.test_triton_interpreter import (  # noqa: F401 (pytestmark: the same skips)
    pytestmark,
    run_interpreted,
)

_CHECK = r"""
from ember import LLM, SamplingParams
from ember.layers import small_batch
from ember.registry import ModelStore, default_home

tiny = str(ModelStore(default_home()).resolve("tiny").path)
prompts = [{"prompt_token_ids": p} for p in ([5, 17, 42, 99, 7, 3, 250, 11], [300, 12, 8])]
greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
llm = LLM(tiny, dtype="float32", device="cpu", block_size=4)
def run():  # one prompt at a time: its decode steps have one row
    return [llm.generate([p], greedy)[0].outputs[0].token_ids for p in prompts]
want = run()
rows = []
small_batch.applies = lambda x: rows.append(x.shape[0]) or x.shape[0] == 1
got = run()
assert got == want, (got, want)
assert any(r == 1 for r in rows) and any(r > 1 for r in rows), rows
print("ok")
"""


def test_fused_layers_generate_the_same_tokens() -> None:
    run_interpreted(_CHECK)


_KERNEL = r"""
import torch
from ember.ops import triton_gemv as g

torch.manual_seed(0)
for dtype in (torch.float16, torch.float32):
    for n, k, bn, bk in ((24, 64, 8, 32), (20, 70, 8, 32), (8, 32, 8, 32)):
        w = torch.randn(n, k, dtype=dtype)
        norm_w = torch.randn(k, dtype=dtype)
        for pre in (g.PRE_NONE, g.PRE_RMSNORM, g.PRE_SILU_MUL, g.PRE_ADD_RMSNORM):
            x = torch.randn(1, 2 * k if pre == g.PRE_SILU_MUL else k, dtype=dtype)
            res = torch.randn(1, k, dtype=dtype)
            outs = []
            for early in (True, False):
                res_out = torch.empty_like(res)
                y = g.gemv_triton(x, w, pre=pre, norm_weight=norm_w, residual=res,
                                  residual_out=res_out, block_n=bn, block_k=bk, num_warps=1,
                                  early=early)
                outs.append((y, res_out))
            ref_res = torch.empty_like(res)
            ref = g.gemv_reference(x, w, pre=pre, norm_weight=norm_w, residual=res,
                                   residual_out=ref_res)
            tol = 2e-2 if dtype == torch.float16 else 1e-4
            for y, res_out in outs:
                err = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
                assert err < tol, (dtype, n, k, pre, err)
                if pre == g.PRE_ADD_RMSNORM:
                    assert torch.equal(res_out, ref_res)
            assert torch.equal(outs[0][0], outs[1][0]), (n, k, pre)  # the same sums either way
print("ok")
"""


def test_gemv_kernel_matches_reference_with_and_without_the_early_weight_tile() -> None:
    run_interpreted(_KERNEL)


_ROTARY = r"""
import torch
from ember.layers.metadata import KVStore
from ember.layers.rotary import RotaryEmbedding
from ember.ops import triton_gemv as g
from ember.ops.triton_fused import rotary_triton
from ember.ops.triton_qkv_rotary import QKVRotary

torch.manual_seed(2)
HQ, HKV, D, BS, HIDDEN = 4, 2, 16, 4, 48
# Plain rope in float16 and float32; YaRN (tables scaled by its attention factor) in float16.
yarn = {"rope_type": "yarn", "factor": 10.0, "original_max_position_embeddings": 8}
ropes = [(RotaryEmbedding(D, 64, 10000.0), torch.float16),
         (RotaryEmbedding(D, 64, 10000.0), torch.float32),
         (RotaryEmbedding(D, 64, 10000.0, yarn), torch.float16)]
for rope, dtype in ropes:
    w = torch.randn((HQ + 2 * HKV) * D, HIDDEN, dtype=dtype) / HIDDEN**0.5
    norm_w = torch.randn(HIDDEN, dtype=dtype)
    for pos, slot, cached in ((0, 5, True), (37, 11, True), (12, -1, True), (9, 3, False)):
        x = torch.randn(1, HIDDEN, dtype=dtype)
        positions = torch.tensor([pos])
        slots = torch.tensor([slot])
        # Today's path: the GEMV, then the rotary kernel that also stores k and v.
        want = g.gemv_triton(x, w, pre=g.PRE_RMSNORM, norm_weight=norm_w)
        q, k, v = want.split([HQ * D, HKV * D, HKV * D], dim=-1)
        q, k, v = q.view(1, HQ, D), k.view(1, HKV, D), v.view(1, HKV, D)
        shape = (6, BS, HKV, D)
        want_cache = (torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))
        store = KVStore(v, want_cache, slots) if cached else None
        rotary_triton(positions, q, k, rope.cos_cache, rope.sin_cache, store)
        # The same in the GEMV's epilogue, to the bit.
        cache = (torch.zeros_like(want_cache[0]), torch.zeros_like(want_cache[1]))
        rot = QKVRotary(positions, rope.cos_cache, rope.sin_cache, HQ, HKV, D,
                          cache if cached else None, slots if cached else None)
        got = g.gemv_triton(x, w, pre=g.PRE_RMSNORM, norm_weight=norm_w, rotary=rot)
        assert torch.equal(got, want), (dtype, pos, (got - want).abs().max())
        assert torch.equal(cache[0], want_cache[0]) and torch.equal(cache[1], want_cache[1])
        stored = cached and slot >= 0
        assert stored == bool(cache[0].abs().sum() > 0) == bool(cache[1].abs().sum() > 0)
    try:
        g.gemv_triton(x, w[:-D], pre=g.PRE_RMSNORM, norm_weight=norm_w, rotary=rot)
    except ValueError as e:
        assert "qkv projection" in str(e), e
    else:
        raise AssertionError("a projection of the wrong width was taken")
print("ok")
"""


def test_rotary_in_the_qkv_epilogue_matches_the_rotary_kernel_to_the_bit() -> None:
    """The one-token qkv GEMV with rotary and the KV store in its epilogue (QKVRotary) writes
    the same q, k, v and cache bytes as the GEMV followed by the rotary kernel (under the
    interpreter, to the bit; on the GPU each kernel may fuse a different product into an FMA,
    which gpu_check's gemv section bounds), YaRN's scaled tables included; a slot of -1 and a
    run without a cache store nothing."""
    run_interpreted(_ROTARY)
