"""The `sdpa` section of gpu_check.py: long prompts' attention, ember's Triton prefill kernel over
the paged cache against torch's scaled_dot_product_attention backends on dense K/V gathered from
the same cache (causal, lower-right aligned where a chunk follows cached context), Llama-3.1-8B
heads, bf16. Sizes the lever before any of it is wired into the engine: the gather's cost, each
backend's µs and TFLOP/s, and its largest difference from ember's output.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

CASES = ((2048, 2048), (8192, 8192), (2048, 8192), (8192, 16384), (2048, 32768))


def section_sdpa(args: argparse.Namespace) -> bool:
    print(f"{'q x keys':<13} {'path':<16} {'us':>9} {'TFLOP/s':>8} {'max |diff|':>10}")
    for q_len, seq_len in CASES:
        _case(q_len, seq_len)
        torch.cuda.empty_cache()
    return True


def _case(q_len: int, seq_len: int) -> None:
    from torch.nn.attention.bias import causal_lower_right

    from ember.ops.triton_attention import paged_attention_into
    from ember.ops.triton_kv import write_kv_triton
    from scripts.gpu_check import LLAMA_8B, Case, make_batch, time_us

    hq, hkv, d = LLAMA_8B
    scale = d**-0.5
    case = Case("sdpa", torch.bfloat16, hq, hkv, d, 16, ((q_len, seq_len),))
    b = make_batch(case, torch.device("cuda"), torch.Generator().manual_seed(3))
    write_kv_triton(b.k_cache, b.v_cache, b.k_new, b.v_new, b.md.slot_mapping)
    flops = 4 * hq * d * q_len * (seq_len - q_len + (q_len + 1) / 2)
    ours = torch.empty_like(b.q)
    label = f"{q_len}x{seq_len}"

    def run_ours() -> None:
        paged_attention_into(ours, b.q, b.k_cache, b.v_cache, b.md, scale)

    us = time_us([run_ours], graph=False)
    print(f"{label:<13} {'ember triton':<16} {us:>9.1f} {flops / us / 1e6:>8.1f}", flush=True)
    bs = b.k_cache.shape[1]
    pos = torch.arange(seq_len, device="cuda")
    slots = b.md.block_tables[0, pos // bs].long() * bs + pos % bs
    flat_k = b.k_cache.view(-1, hkv, d)
    flat_v = b.v_cache.view(-1, hkv, d)

    def gather() -> tuple[torch.Tensor, torch.Tensor]:
        return flat_k.index_select(0, slots), flat_v.index_select(0, slots)

    us = time_us([gather], graph=False)
    print(f"{label:<13} {'gather K/V':<16} {us:>9.1f}", flush=True)
    k, v = gather()
    qd = b.q.transpose(0, 1).unsqueeze(0)
    kd = k.transpose(0, 1).unsqueeze(0)
    vd = v.transpose(0, 1).unsqueeze(0)
    mask = None if q_len == seq_len else causal_lower_right(q_len, seq_len)
    for backend in (
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
    ):
        name = "sdpa " + backend.name.lower().replace("_attention", "")

        def run_sdpa(backend: SDPBackend = backend) -> torch.Tensor:
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(
                    qd, kd, vd, attn_mask=mask, is_causal=mask is None, scale=scale,
                    enable_gqa=True,
                )  # fmt: skip

        try:
            got = run_sdpa()[0].transpose(0, 1)
            us = time_us([run_sdpa], graph=False)
        except Exception as e:  # a backend that refuses these inputs: say why
            print(f"{label:<13} {name:<16} unavailable: {type(e).__name__}: {e}")
            continue
        diff = (got.float() - ours.float()).abs().max().item()
        print(
            f"{label:<13} {name:<16} {us:>9.1f} {flops / us / 1e6:>8.1f} {diff:>10.2e}",
            flush=True,
        )
