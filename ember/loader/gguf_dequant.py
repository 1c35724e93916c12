"""GGUF tensor bytes dequantized with torch on whatever device they sit on (the GPU when serving,
the CPU in tests): F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K and Q6_K. Other types go through the
`gguf` package's numpy code on the CPU and are then moved to the device.

Block layouts are those of gguf/quants.py (the reference), and the float32 arithmetic is done in
the same order, so results equal gguf.quants.dequantize bit for bit before the final cast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import gguf
import numpy as np
import torch

Q = gguf.GGMLQuantizationType
QK_K = 256  # values in a K-quant super-block

# Values dequantized per pass over a quantized tensor: bounds the float32 temporaries (64 MiB
# each) however large the tensor is (a 262k x 5376 embedding is 1.4G values).
CHUNK_VALUES = 1 << 24

_FLOATS = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}


def dequantize_blocks(
    raw: torch.Tensor,
    qtype: gguf.GGMLQuantizationType,
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The tensor of `shape` (row-major, as HF lays it out) stored as `raw`, the GGUF bytes of
    type `qtype` (uint8, any device), in `dtype` on raw's device. For F32 to float32 the result
    may share raw's memory. Raises ValueError if raw's size does not fit shape, and
    NotImplementedError for a type that neither this module nor gguf can dequantize."""
    if raw.dtype != torch.uint8:
        raise ValueError(f"GGUF tensor bytes must be uint8, not {raw.dtype}")
    if qtype not in gguf.GGML_QUANT_SIZES:
        raise NotImplementedError(f"unknown GGUF tensor type {qtype}")
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    numel = math.prod(shape)
    if numel % block_size or raw.numel() != numel // block_size * type_size:
        raise ValueError(
            f"{raw.numel()} bytes of {qtype.name} do not hold a tensor of shape {tuple(shape)}"
        )
    raw = raw.reshape(-1)
    if qtype in _FLOATS:
        # F16 and BF16 widen to float32 exactly, so one direct cast rounds like float32 would.
        return raw.view(_FLOATS[qtype]).to(dtype).reshape(shape)
    kernel = _KERNELS.get(qtype)
    if kernel is None:
        values = gguf.quants.dequantize(raw.cpu().numpy(), qtype)
        host = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        return host.to(raw.device, dtype).reshape(shape)
    blocks = raw.view(-1, type_size)
    out = torch.empty(blocks.shape[0], block_size, dtype=dtype, device=raw.device)
    step = max(1, CHUNK_VALUES // block_size)
    for start in range(0, blocks.shape[0], step):
        out[start : start + step] = kernel(blocks[start : start + step])
    return out.reshape(shape)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """(n, 2) bytes of little-endian float16 -> (n, 1) float32."""
    return b.contiguous().view(torch.float16).float()


def _nibbles(b: torch.Tensor, dim: int) -> torch.Tensor:
    """Low nibbles then high nibbles of b, stacked along a new axis at dim."""
    return torch.stack([b & 0x0F, b >> 4], dim=dim)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    # d: f16, then 32 int8 values.
    return b[:, 2:].view(torch.int8).float() * _f16(b[:, :2])


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    # d: f16, then 16 bytes: values 0-15 in the low nibbles, 16-31 in the high ones, offset 8.
    q = _nibbles(b[:, 2:], 1).reshape(b.shape[0], 32)
    return _f16(b[:, :2]) * (q.float() - 8.0)


def _k_scale_min(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 six-bit scales and mins of a Q4_K/Q5_K super-block from its 12 bytes."""
    d, m, md = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scale = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    low = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return scale.float(), low.float()


def _k_affine(b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """d * scale * q - dmin * min for the 8 sub-blocks of 32 values (q: (n, 8, 32) uint8)."""
    scale, low = _k_scale_min(b[:, 4:16])
    d = (_f16(b[:, 0:2]) * scale).unsqueeze(-1)
    dm = (_f16(b[:, 2:4]) * low).unsqueeze(-1)
    return (d * q.float() - dm).reshape(b.shape[0], QK_K)


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    # d, dmin: f16; 12 bytes of scales/mins; 128 bytes: each 32 holds two sub-blocks (nibbles).
    q = _nibbles(b[:, 16:].reshape(-1, 4, 32), 2).reshape(-1, 8, 32)
    return _k_affine(b, q)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    # As Q4_K, with 32 bytes of fifth bits (bit j of byte i: value i of sub-block j) before qs.
    low = _nibbles(b[:, 48:].reshape(-1, 4, 32), 2).reshape(-1, 8, 32)
    bits = torch.arange(8, dtype=torch.uint8, device=b.device).view(1, 8, 1)
    high = (b[:, 16:48].unsqueeze(1) >> bits) & 1
    return _k_affine(b, low | (high << 4))


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    # 128 bytes of low nibbles, 64 of 2-bit highs, 16 int8 scales (one per 16 values), d: f16.
    n = b.shape[0]
    low = _nibbles(b[:, :128].reshape(n, 2, 64), 2).reshape(n, 8, 32)
    shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=b.device).view(1, 1, 4, 1)
    high = ((b[:, 128:192].reshape(n, 2, 1, 32) >> shifts) & 3).reshape(n, 8, 32)
    q = ((low | (high << 4)).float() - 32.0).reshape(n, 16, 16)
    d = (_f16(b[:, 208:210]) * b[:, 192:208].view(torch.int8).float()).unsqueeze(-1)
    return (d * q).reshape(n, QK_K)


# (n, type_size) uint8 blocks -> (n, block_size) float32 values.
_KERNELS: dict[gguf.GGMLQuantizationType, Callable[[torch.Tensor], torch.Tensor]] = {
    Q.Q8_0: _q8_0,
    Q.Q4_0: _q4_0,
    Q.Q4_K: _q4_k,
    Q.Q5_K: _q5_k,
    Q.Q6_K: _q6_k,
}
