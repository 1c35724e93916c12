"""The workload bounds the GPU benchmarks print beside their results."""

from __future__ import annotations

import pytest

from benchmarks.common import LLAMA_8B, prefill_flops_per_token, workload_bound

PEAK_TFLOPS, HBM_GBS = 791.0, 4214.0


def test_one_decode_step_by_hand() -> None:
    """Llama-3.1-8B, 256 requests of 512 prompt tokens, one decode step over 513 keys."""
    bound = workload_bound(LLAMA_8B, 256, 512, 2, PEAK_TFLOPS, HBM_GBS)
    layer = 4096 * 128 * (32 + 16) + 32 * 128 * 4096 + 3 * 4096 * 14336  # parameters
    lm_head = 2 * 128256 * 4096
    prefill = 256 * (512 * prefill_flops_per_token(LLAMA_8B, 512) + lm_head) / 791e12
    matmul = 256 * (2 * 32 * layer + lm_head) / 791e12
    attention = 256 * 32 * 4 * 32 * 128 * 513 / 791e12
    weights = 2 * (32 * layer + 128256 * 4096) / 4214e9
    kv = 256 * 513 * 32 * 2 * 8 * 128 * 2 / 4214e9
    assert bound.compute_s == pytest.approx(prefill + matmul + attention)
    assert bound.roofline_s == pytest.approx(prefill + max(matmul + attention, weights + kv))
    assert bound.serial_s == pytest.approx(prefill + max(matmul, weights) + kv)


def test_the_256_stream_workload() -> None:
    """512 in / 256 out at 256 streams: decode steps are memory-bound at the roofline, so the
    bounds order compute < roofline < serial, and an fp8 cache (half the KV bytes) moves only
    the two that read it."""
    bf16 = workload_bound(LLAMA_8B, 256, 512, 256, PEAK_TFLOPS, HBM_GBS)
    fp8 = workload_bound(LLAMA_8B, 256, 512, 256, PEAK_TFLOPS, HBM_GBS, kv_elem=1)
    assert bf16.compute_s < bf16.roofline_s < bf16.serial_s
    assert fp8.compute_s == bf16.compute_s
    assert fp8.roofline_s < bf16.roofline_s and fp8.serial_s < bf16.serial_s
    assert 256 * 256 / bf16.roofline_s == pytest.approx(14_425, rel=1e-3)


def test_batch_one_is_bound_by_reading_the_weights() -> None:
    bound = workload_bound(LLAMA_8B, 1, 128, 257, PEAK_TFLOPS, HBM_GBS)
    assert bound.roofline_s == pytest.approx(bound.serial_s)
    assert bound.compute_s < bound.roofline_s / 50
