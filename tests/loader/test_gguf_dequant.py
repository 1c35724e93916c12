"""ember's torch dequantization of GGUF bytes against the `gguf` package's numpy reference: the
same float32 values bit for bit, in every type it implements, for shapes of several rows, split
over several passes, cast to the serving dtype, and through the numpy fallback for the rest."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from ember.loader import gguf_dequant
from ember.loader.gguf_dequant import dequantize_blocks
from ember.loader.gguf_model import GGUFModel

from .gguf_blocks import random_blocks, write_tensors

Q = gguf.GGMLQuantizationType
TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_K, Q.Q5_K, Q.Q6_K]


def _reference(stored: np.ndarray, qtype: gguf.GGMLQuantizationType) -> torch.Tensor:
    values = gguf.quants.dequantize(stored, qtype).reshape(stored.shape[0], -1)
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def _ours(
    stored: np.ndarray, qtype: gguf.GGMLQuantizationType, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    rows = stored.shape[0]
    cols = stored.shape[1] // gguf.GGML_QUANT_SIZES[qtype][1] * gguf.GGML_QUANT_SIZES[qtype][0]
    return dequantize_blocks(torch.from_numpy(stored.copy()), qtype, (rows, cols), dtype)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("rows,cols", [(1, 256), (7, 768), (3, 4096)])
def test_equals_gguf_numpy_bit_for_bit(
    qtype: gguf.GGMLQuantizationType, rows: int, cols: int
) -> None:
    stored = random_blocks(qtype, rows, cols, seed=rows * 1000 + cols)
    got = _ours(stored, qtype)
    want = _reference(stored, qtype)
    assert got.dtype == torch.float32 and got.shape == (rows, cols)
    assert torch.equal(got, want)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_serving_dtype_is_the_float32_values_rounded_once(
    qtype: gguf.GGMLQuantizationType, dtype: torch.dtype
) -> None:
    stored = random_blocks(qtype, 5, 512, seed=3)
    assert torch.equal(_ours(stored, qtype, dtype), _reference(stored, qtype).to(dtype))


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_K, Q.Q6_K], ids=lambda q: q.name)
def test_passes_over_a_tensor_split_anywhere_give_the_same_values(
    qtype: gguf.GGMLQuantizationType, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = random_blocks(qtype, 3, 1024, seed=4)  # 12 K-quant blocks, 96 of Q8_0/Q4_0
    monkeypatch.setattr(gguf_dequant, "CHUNK_VALUES", 5 * 256)  # passes end mid-row
    assert torch.equal(_ours(stored, qtype), _reference(stored, qtype))


def test_real_quantizer_output_round_trips() -> None:
    # Blocks as llama.cpp writes them (gguf's quantizer), not just random bytes.
    values = np.random.default_rng(5).standard_normal((6, 320), dtype=np.float32)
    for qtype in (Q.Q8_0, Q.Q4_0):
        stored = gguf.quants.quantize(values, qtype)
        assert torch.equal(_ours(stored, qtype), _reference(stored, qtype))


@pytest.mark.parametrize("qtype", [Q.Q5_0, Q.Q4_1, Q.Q3_K], ids=lambda q: q.name)
def test_other_types_fall_back_to_gguf(qtype: gguf.GGMLQuantizationType) -> None:
    stored = random_blocks(qtype, 2, 512, seed=6)
    got = _ours(stored, qtype, torch.bfloat16)
    assert torch.equal(got, _reference(stored, qtype).to(torch.bfloat16))


def test_bytes_that_do_not_fit_the_shape_are_refused() -> None:
    raw = torch.zeros(34 * 3, dtype=torch.uint8)  # three Q8_0 blocks: 96 values
    with pytest.raises(ValueError, match="do not hold a tensor of shape"):
        dequantize_blocks(raw, Q.Q8_0, (4, 32))
    with pytest.raises(ValueError, match="do not hold"):
        dequantize_blocks(raw, Q.Q8_0, (1, 100))


def test_file_tensors_in_the_serving_dtype_are_the_float32_ones_rounded_once(
    tmp_path: Path,
) -> None:
    # What the converter reads: q/k rows put back in HF order (llama), Gemma's 1 + weight norms
    # taken back in float32 (in bf16 the low bits would be gone), then one rounding to bf16.
    q_proj = random_blocks(Q.Q6_K, 8, 256, seed=7)
    norm = 1.0 + np.random.default_rng(8).standard_normal(256, dtype=np.float32) / 100
    cases = (
        ("llama", "blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", q_proj, Q.Q6_K),
        ("gemma2", "blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight", norm, Q.F32),
    )
    for arch, name, hf_name, data, qtype in cases:
        write_tensors(tmp_path / f"{arch}.gguf", arch, {name: (data, qtype)})
        model = GGUFModel.open(tmp_path / f"{arch}.gguf")
        [(got_name, want)] = model.tensors([hf_name])
        [(_, got)] = model.tensors([hf_name], "cpu", torch.bfloat16)
        assert got_name == hf_name and got.dtype == torch.bfloat16
        assert torch.equal(got, want.to(torch.bfloat16))
    assert torch.equal(want, torch.from_numpy(norm) - 1.0)
