"""What `ember list` / Ollama's /api/tags say about a model directory: size, modification time,
digest and details, read from file metadata, config.json and safetensors headers only."""

from __future__ import annotations

import hashlib
import json
import struct
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ember.errors import ModelLoadError

# Safetensors header bytes at most; real headers are a few MiB for the largest checkpoints.
_MAX_HEADER_BYTES = 100 * 1024 * 1024

_DTYPE_LEVELS = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


@dataclass(frozen=True, slots=True)
class ModelDetails:
    """The `details` object of Ollama's /api/tags and /api/show."""

    format: str  # "safetensors", "gguf" or "pytorch"
    family: str  # config.json's model_type, e.g. "llama", "qwen2"
    families: tuple[str, ...]
    parameter_size: str  # e.g. "8.0B", "494.03M"
    quantization_level: str  # e.g. "BF16", "F32", "FP8"
    parent_model: str = ""


@dataclass(frozen=True, slots=True)
class DirInfo:
    size: int  # bytes of all files
    modified_at: datetime  # newest file's mtime, UTC
    digest: str  # sha256 hex
    details: ModelDetails


def visible_files(path: Path) -> list[Path]:
    """Regular files under `path`, sorted, skipping hidden files and folders (temp files)."""
    out = []
    for file in path.rglob("*"):
        rel = file.relative_to(path)
        if any(part.startswith(".") for part in rel.parts) or not file.is_file():
            continue
        out.append(file)
    return sorted(out)


def weight_files(path: Path) -> list[Path]:
    """The model's own safetensors: those model.safetensors.index.json names, else the top-level
    *.safetensors. Files in subfolders (warm_kv/, onnx/, original/) belong to something else."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted({str(n) for n in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelLoadError(f"cannot read {index}: {exc}; fix or re-download it") from exc
        return [path / n for n in names if (path / n).is_file()]
    return sorted(f for f in path.glob("*.safetensors") if f.is_file())


def human_number(n: int) -> str:
    """Parameter counts the way Ollama prints them: 8B, 7.6B, 494.03M, 227K."""
    for scale, unit, digits in ((1e9, "B", 1), (1e6, "M", 2)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.{digits}f}{unit}"
    return f"{n / 1e3:.0f}K" if n >= 1000 else str(n)


def safetensors_header(file: Path) -> dict[str, Any]:
    try:
        with file.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > _MAX_HEADER_BYTES:
                raise ValueError(f"header of {length} bytes")
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise ModelLoadError(
            f"{file} is not a valid safetensors file ({exc}); re-download it"
        ) from exc
    if not isinstance(header, dict):
        raise ModelLoadError(f"{file} has a malformed safetensors header; re-download it")
    return header


def _tensor_stats(files: list[Path]) -> tuple[int, Counter[str]]:
    """Total parameter count and element count per safetensors dtype."""
    total = 0
    by_dtype: Counter[str] = Counter()
    for file in files:
        for name, entry in safetensors_header(file).items():
            if name == "__metadata__" or not isinstance(entry, dict):
                continue
            count = 1
            for dim in entry.get("shape", []):
                count *= int(dim)
            total += count
            by_dtype[str(entry.get("dtype", ""))] += count
    return total, by_dtype


def _quantization_level(config: dict[str, Any], by_dtype: Counter[str]) -> str:
    quant = config.get("quantization_config")
    if isinstance(quant, dict) and quant.get("quant_method"):
        level = str(quant["quant_method"]).upper()
        bits = quant.get("bits") or quant.get("w_bit")
        return f"{level}-INT{bits}" if isinstance(bits, int) else level
    dtype = config.get("torch_dtype") or config.get("dtype")
    if isinstance(dtype, str) and dtype in _DTYPE_LEVELS:
        return _DTYPE_LEVELS[dtype]
    return by_dtype.most_common(1)[0][0] if by_dtype else "unknown"


def _read_config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    if not file.is_file():
        return {}
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {file}: {exc}; fix or re-download it") from exc
    return config if isinstance(config, dict) else {}


def inspect_dir(path: Path) -> DirInfo:
    files = visible_files(path)
    digest = hashlib.sha256()
    size = 0
    newest = 0
    for file in files:
        st = file.stat()
        size += st.st_size
        newest = max(newest, st.st_mtime_ns)
        # Names, sizes and mtimes rather than contents: stable while the files are unchanged and
        # cheap for checkpoints of many GiB.
        rel = file.relative_to(path).as_posix()
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    tensors = weight_files(path)
    params, by_dtype = _tensor_stats(tensors)
    config = _read_config(path)
    family = str(config.get("model_type") or "unknown")
    if tensors:
        fmt = "safetensors"
    elif any(f.suffix == ".gguf" and f.parent == path for f in files):
        fmt = "gguf"
    else:
        fmt = "pytorch"
    details = ModelDetails(
        format=fmt,
        family=family,
        families=(family,),
        parameter_size=human_number(params) if params else "unknown",
        quantization_level=_quantization_level(config, by_dtype),
    )
    return DirInfo(
        size=size,
        modified_at=datetime.fromtimestamp(newest / 1e9, tz=timezone.utc),
        digest=digest.hexdigest(),
        details=details,
    )
