"""The safetensors header: 8 bytes little-endian length N, then N bytes of JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, offsets
relative to the byte after the header. Everything is checked against the file's size before
any weight byte is read, so a truncated or corrupt file fails in milliseconds.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

import torch

from ember.errors import ModelLoadError
from ember.loader.source import Source

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit
# The first read takes this much, which holds the whole header of every real checkpoint
# (an 8B shard's header is ~30 KB), so a remote header costs one request.
FIRST_READ_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class TensorMeta:
    name: str
    file: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int  # exclusive

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(source: Source, name: str) -> list[TensorMeta]:
    """The tensors of one safetensors file, sorted by offset."""
    where = source.location(name)
    size = source.size(name)
    if size < 8:
        raise ModelLoadError(
            f"cannot read weights from '{where}': {size} bytes is too short for a safetensors "
            "file; the file is truncated or not safetensors"
        )
    first = bytearray(min(size, FIRST_READ_BYTES))
    got = source.read_into(name, 0, memoryview(first))
    length = int.from_bytes(first[:8], "little")
    if length > MAX_HEADER_BYTES or 8 + length > size:
        raise ModelLoadError(
            f"cannot read weights from '{where}': the header claims {length} bytes but the file "
            f"has {size}; the file is truncated or not safetensors"
        )
    raw = bytes(first[8 : 8 + length])
    if 8 + length > got:
        rest = bytearray(8 + length - got)
        more = source.read_into(name, got, memoryview(rest))
        raw = bytes(first[8:got]) + bytes(rest[:more])
    if len(raw) != length:
        raise ModelLoadError(f"cannot read weights from '{where}': the header ends early")
    return parse_header(raw, where, name, size)


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object's pairs as a dict, refusing a key given twice (json keeps the last one
    silently: a header naming a tensor twice would load one of its two byte ranges)."""
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_header(raw: bytes, where: str, name: str, size: int) -> list[TensorMeta]:
    try:
        header = json.loads(raw, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"cannot read weights from '{where}': the header is not valid JSON ({exc}); the file "
            "is corrupt or not safetensors"
        ) from exc
    except _DuplicateKey as dup:
        raise ModelLoadError(
            f"cannot read weights from '{where}': its header lists '{dup.key}' twice; the file "
            "is corrupt"
        ) from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"cannot read weights from '{where}': the header is not an object")
    data_start = 8 + len(raw)
    tensors = [
        _tensor(key, entry, where, name, data_start, size)
        for key, entry in header.items()
        if key != "__metadata__"
    ]
    tensors.sort(key=lambda t: (t.start, t.end))
    for before, after in itertools.pairwise(tensors):
        if after.start < before.end:
            raise ModelLoadError(
                f"cannot read weights from '{where}': tensors '{before.name}' and '{after.name}' "
                "overlap; the file is corrupt"
            )
    return tensors


def _tensor(
    key: str, entry: object, where: str, name: str, data_start: int, size: int
) -> TensorMeta:
    def bad(why: str) -> ModelLoadError:
        return ModelLoadError(f"cannot read weights from '{where}': tensor '{key}' {why}")

    if not isinstance(entry, dict):
        raise bad("has no dtype/shape/data_offsets entry")
    dtype = DTYPES.get(str(entry.get("dtype")))
    if dtype is None:
        raise bad(f"has dtype {entry.get('dtype')!r}, which ember does not load")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise bad(f"has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise bad(f"has invalid data_offsets {offsets!r}")
    nbytes = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise bad(
            f"has shape {shape} of {entry['dtype']} ({nbytes} bytes) but data_offsets span "
            f"{offsets[1] - offsets[0]} bytes; the file is corrupt"
        )
    start, end = data_start + offsets[0], data_start + offsets[1]
    if end > size:
        raise bad(
            f"needs bytes up to {end} but the file has {size}; the file is truncated "
            "(an interrupted download?), fetch it again"
        )
    return TensorMeta(key, name, dtype, tuple(shape), start, end)
