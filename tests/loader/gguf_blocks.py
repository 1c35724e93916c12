"""Random GGUF tensor bytes of any type, as GGUFReader hands them out ((rows, bytes per row)
uint8): for the dequantization tests, the GGUF writer of the model tests and the GPU check.

Any bit pattern is a valid quantized block except where a float16 scale sits, so blocks are
random bytes with finite float16 scales drawn from `scale`. `write_tensors` puts such tensors in
a GGUF file with just the metadata GGUFModel.tensors needs."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType
# Byte offsets of the float16 scales (d, dmin, ...) in one block of each quantized type.
F16_AT: dict[gguf.GGMLQuantizationType, tuple[int, ...]] = {
    Q.Q4_0: (0,),
    Q.Q4_1: (0, 2),
    Q.Q5_0: (0,),
    Q.Q5_1: (0, 2),
    Q.Q8_0: (0,),
    Q.Q2_K: (80, 82),
    Q.Q3_K: (108,),
    Q.Q4_K: (0, 2),
    Q.Q5_K: (0, 2),
    Q.Q6_K: (208,),
}


def random_blocks(
    qtype: gguf.GGMLQuantizationType,
    rows: int,
    cols: int,
    seed: int,
    scale: tuple[float, float] = (-0.05, 0.05),
) -> np.ndarray:
    """A (rows, cols) tensor's bytes in qtype; F32/F16/BF16 hold standard-normal values."""
    rng = np.random.default_rng(seed)
    if qtype in (Q.F32, Q.F16, Q.BF16):
        values = rng.standard_normal((rows, cols), dtype=np.float32)
        stored = values if qtype == Q.F32 else gguf.quants.quantize(values, qtype)
        return np.ascontiguousarray(stored).view(np.uint8)
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (rows * cols // block_size, type_size), dtype=np.uint8)
    for at in F16_AT[qtype]:
        d = np.asarray(rng.uniform(*scale, blocks.shape[0]), dtype=np.float16)
        blocks[:, at : at + 2] = d.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, cols // block_size * type_size)


def write_tensors(
    path: Path,
    arch: str,
    tensors: dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType]],
    heads: int = 2,
) -> None:
    """A one-layer GGUF file of `arch` holding tensors (GGUF name -> (bytes or F32 values,
    type))."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    for name, (data, qtype) in tensors.items():
        w.add_tensor(name, data, raw_dtype=None if qtype == Q.F32 else qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
