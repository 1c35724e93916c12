"""The Triton backend must import everywhere, also where Triton or CUDA is missing (CI's CPU)."""

from __future__ import annotations

import inspect

import torch

from ember.ops import attention_ref, triton_attention, triton_kv


def test_modules_import_and_report_availability() -> None:
    assert triton_attention.available() is triton_kv.available()
    if not torch.cuda.is_available():
        assert triton_attention.available() is False


def test_signatures_match_the_reference() -> None:
    ref = inspect.signature(attention_ref.paged_attention_ref)
    assert inspect.signature(triton_attention.paged_attention_triton) == ref
    assert inspect.signature(triton_kv.write_kv_triton) == inspect.signature(attention_ref.write_kv)


def test_gemv_reference_applies_the_pre_ops() -> None:
    """The experimental GEMV module imports without Triton, and its reference (the oracle of
    gpu_check --section gemv) is RMSNorm / SiLU-and-multiply, then the projection."""
    from ember.layers.norm import RMSNorm
    from ember.ops.triton_gemv import PRE_RMSNORM, PRE_SILU_MUL, gemv_reference

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 64, generator=g), torch.randn(8, 64, generator=g)
    norm = RMSNorm(64, eps=1e-5)
    norm.weight.data = torch.rand(64, generator=g) + 0.5
    got = gemv_reference(x, w, pre=PRE_RMSNORM, norm_weight=norm.weight, eps=1e-5)
    torch.testing.assert_close(got, norm(x) @ w.T)
    gate, up = x[:, :32], x[:, 32:]
    silu = gemv_reference(x, w[:, :32], pre=PRE_SILU_MUL)
    torch.testing.assert_close(silu, (torch.nn.functional.silu(gate) * up) @ w[:, :32].T)


def test_decode_tiles_follow_the_sweeps() -> None:
    """The decode launch's tiles (H200 sweeps, docs/benchmarks.md, sixth and fifteenth
    sessions): bf16 with many programs on 64-key tiles and 2 warps; with few programs, and fp8
    always (V widened in registers), 128-key tiles in one loop with 5 stages; one bf16 sequence
    in pieces on 128-key tiles with 2 stages; Gemma's head_dim 256 on 64-key tiles; a group
    wider than 16 rows widens BLOCK_M."""
    cfg = triton_attention._decode_config
    kc = triton_attention.KernelConfig
    deep = kc(16, 128, 4, 5, one_loop=True)
    assert cfg(128, 4, 2, few=False) == kc(16, 64, 2, 3)
    assert cfg(128, 4, 2, few=True) == deep
    assert cfg(128, 4, 2, few=False, split=True) == kc(16, 128, 4, 2)  # one sequence in pieces
    fp8 = kc(16, 128, 4, 5, one_loop=True, widen_v_early=True)  # V widened in registers
    assert cfg(128, 4, 1, few=False) == fp8
    assert cfg(128, 4, 1, few=True) == fp8
    assert cfg(256, 2, 2, few=False) == kc(16, 64, 4, 2)
    assert cfg(256, 2, 1, few=True) == kc(16, 64, 4, 3)
    assert cfg(64, 7, 4, few=False) == kc(16, 32, 4, 2)  # fp32 caches (tests)
    assert cfg(128, 32, 2, few=False).block_m == 32


def test_kv_splits_keep_one_program_an_sm() -> None:
    """Pieces of a decode step: as many as keep every (sequence, KV head, piece) program on an
    SM of its own (132 SMs off the GPU, as on the H200), at most 16, at least one 128-key tile
    each by the length given; none once the programs fill the SMs."""
    cpu = torch.device("cpu")
    splits = triton_attention.kv_splits_for
    assert [splits(b, 8, 131072, cpu) for b in (1, 2, 4, 8, 16, 17, 256)] == [16, 8, 4, 2, 1, 1, 1]
    assert splits(1, 8, 300, cpu) == 2  # a short max length: one tile a piece at least
    assert splits(1, 1, 131072, cpu) == 16
    assert triton_attention.few_programs(16, 8, cpu)
    assert not triton_attention.few_programs(1, 8, cpu)  # batch-1 decode keeps its tiles
    assert not triton_attention.few_programs(17, 8, cpu)
