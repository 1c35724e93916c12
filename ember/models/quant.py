"""What a config.json's `quantization_config` asks of the loader, read with the rest of the config
(before any weight byte): FP8 weights, which ember dequantizes to the model's dtype at load
(models/fp8.py), or a method ember refuses with a message that says what to serve instead.

FP8 comes in three layouts, each a float8 `*.weight` with a scale beside it
(W = Wq * scale, in float32):
- `fp8` (transformers' FineGrainedFP8, Qwen3-*-FP8, DeepSeek): `*.weight_scale_inv` of one scale
  per `weight_block_size` block, ragged at the edges; without a block size (and in AutoFP8's
  older files) one `*.weight_scale` or `*.weight_scale_inv` per tensor or per output channel.
- `fbgemm_fp8` (Meta's Llama-3.1-*-FP8): `*.weight_scale` per output channel.
- `compressed-tensors` with 8-bit float weights (RedHatAI / neuralmagic `*-FP8`,
  `*-FP8-dynamic`, `*-FP8-block`): `*.weight_scale` per tensor, channel, group or block.
Modules left unquantized (`ignore`, `modules_to_not_convert`: lm_head, vision towers) are stored
in bf16 with no scale, so they load as any other tensor. This module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from ember.errors import ModelLoadError

_INSTEAD = "serve the model's bf16/fp16 checkpoint, its FP8 version, or a GGUF file"
# compressed-tensors formats that store 8-bit float weights as float8 tensors, unpacked.
_CT_FLOAT_FORMATS = frozenset({"float-quantized", "naive-quantized"})


@dataclass(frozen=True, slots=True)
class Fp8Format:
    """An FP8 checkpoint's layout: `method` as config.json names it; `block` the (rows, columns)
    that one scale covers when scales come in blocks (a group of g is (1, g)), None when each
    scale covers a tensor or an output channel (the scale's shape tells which)."""

    method: str
    block: tuple[int, int] | None = None

    def describe(self) -> str:
        if self.block is None:
            return f"{self.method}, per-tensor/channel scales"
        return f"{self.method}, {self.block[0]}x{self.block[1]} blocks"


def read_quantization(raw: dict[str, Any]) -> Fp8Format | None:
    """The FP8 layout of a config.json (its top level: a multimodal config keeps it there), or
    None for an unquantized model. Raises ModelLoadError for any other quantization, ValueError
    for a malformed one."""
    # Older compressed-tensors checkpoints name the block compression_config.
    quant = raw.get("quantization_config") or raw.get("compression_config")
    if quant is None:
        return None
    if not isinstance(quant, dict):
        raise ValueError(f"quantization_config is not an object: {quant!r}")
    method = str(quant.get("quant_method") or _implied_method(quant)).lower()
    if method == "fp8":
        if str(quant.get("scale_fmt") or "float") != "float":
            _refuse(f"'fp8' with scale_fmt '{quant['scale_fmt']}'")
        return Fp8Format(method, _block(quant.get("weight_block_size"), "weight_block_size"))
    if method == "fbgemm_fp8":
        return Fp8Format(method)
    if method == "compressed-tensors":
        return _compressed_tensors(quant)
    _refuse(f"'{method}'{_bits(quant)}")


def _refuse(what: str) -> NoReturn:
    raise ModelLoadError(f"quantization {what} is not supported; {_INSTEAD}")


def _implied_method(quant: dict[str, Any]) -> str:
    # bitsandbytes configs written before quant_method existed
    if quant.get("load_in_4bit") or quant.get("load_in_8bit"):
        return "bitsandbytes"
    return "unknown"


def _bits(quant: dict[str, Any]) -> str:
    bits = quant.get("bits") or quant.get("w_bit") or quant.get("nbits")
    if quant.get("load_in_4bit"):
        bits = 4
    elif quant.get("load_in_8bit"):
        bits = 8
    return f" ({bits}-bit)" if isinstance(bits, int) else ""


def _block(value: Any, key: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ValueError(
            f"quantization_config has {key} {value!r}; expected two positive integers "
            "[rows, columns]"
        )
    return int(value[0]), int(value[1])


def _compressed_tensors(quant: dict[str, Any]) -> Fp8Format:
    sparsity = quant.get("sparsity_config")
    if isinstance(sparsity, dict) and sparsity.get("format") not in (None, "dense"):
        _refuse(f"'compressed-tensors' with {sparsity['format']} sparse weights")
    if quant.get("transform_config"):
        _refuse("'compressed-tensors' with transforms (rotated weights)")
    groups = quant.get("config_groups") or {}
    if not isinstance(groups, dict):
        raise ValueError(f"quantization_config.config_groups is not an object: {groups!r}")
    blocks: set[tuple[int, int]] = set()
    for group in groups.values():
        if not isinstance(group, dict):
            raise ValueError(f"a compressed-tensors config group is not an object: {group!r}")
        weights = group.get("weights")
        if weights is None:
            continue  # activations or the KV cache only: the weights are stored unquantized
        if not isinstance(weights, dict):
            raise ValueError(f"compressed-tensors weights are not an object: {weights!r}")
        fmt = str(group.get("format") or quant.get("format") or "unknown")
        bits, kind = weights.get("num_bits"), weights.get("type")
        if fmt not in _CT_FLOAT_FORMATS or bits != 8 or kind != "float":
            _refuse(f"'compressed-tensors' ({bits}-bit {kind} weights, format '{fmt}')")
        if weights.get("symmetric") is False:
            _refuse("'compressed-tensors' with asymmetric FP8 weights (zero points)")
        strategy = weights.get("strategy")
        if strategy == "block":
            block = _block(weights.get("block_structure"), "block_structure")
            if block is None:
                raise ValueError("a compressed-tensors block strategy has no block_structure")
            blocks.add(block)
        elif strategy == "group":
            size = weights.get("group_size")
            if not isinstance(size, int) or size <= 0:
                raise ValueError(f"a compressed-tensors group strategy has group_size {size!r}")
            blocks.add((1, size))
        elif strategy not in ("tensor", "channel"):
            _refuse(f"'compressed-tensors' with FP8 weight strategy '{strategy}'")
    if len(blocks) > 1:
        _refuse(f"'compressed-tensors' with several FP8 block shapes {sorted(blocks)}")
    return Fp8Format("compressed-tensors", blocks.pop() if blocks else None)
