"""FP8 checkpoints served in the model's dtype (bf16 on GPUs): W = Wq * scale, computed in float32
and rounded once to that dtype.

Nothing changes on the streamer's path: a float8 `*.weight` streams into its (bf16) parameter
as any checkpoint of another dtype does, through a float8 staging tensor that is cast on the
device (exactly: every float8 value is a bf16, fp16 and fp32 value). Its scale has no parameter,
so it arrives as a tensor of its own and is kept here; activation and KV-cache scales are dropped
(ember computes in the model's dtype). Once every tensor is in place, `dequantize` multiplies each
weight by its scales in place on the device, a bounded slice of rows at a time: the peak is the
bf16 model plus the float8 staging of the tensors in flight and one slice's temporaries, never a
second copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from ember.errors import ModelLoadError
from ember.loader import TensorMeta
from ember.models.quant import Fp8Format
from ember.models.weights import WeightSlot

FLOAT8 = frozenset({torch.float8_e4m3fn, torch.float8_e5m2})
WEIGHT_SCALES = ("weight_scale_inv", "weight_scale")
# Scales of what ember computes in the model's dtype: inputs (static FP8 activations, fbgemm's
# upper bound) and the KV cache (compressed-tensors kv_cache_scheme).
ACTIVATION_SCALES = frozenset({"input_scale", "input_scale_ub", "k_scale", "v_scale"})
# float32 elements of a weight scaled at once: 16 MiB, in a temporary or two
SLICE_ELEMENTS = 1 << 22


@dataclass(slots=True)
class Fp8Weights:
    """The float8 weights of one checkpoint and their scales (checkpoint names), checked
    against the headers before any weight byte is read; the scales are kept as they stream."""

    format: Fp8Format
    scale_of: dict[str, str]  # float8 weight -> its scale tensor
    scales: dict[str, torch.Tensor] = field(default_factory=dict)  # as they stream in

    @classmethod
    def plan(cls, fmt: Fp8Format, tensors: Iterable[TensorMeta]) -> Fp8Weights:
        """Raises ModelLoadError for a float8 tensor without a scale of a fitting shape, or a
        scale without a float8 weight."""
        metas = {m.name: m for m in tensors}
        scale_of: dict[str, str] = {}
        for meta in metas.values():
            prefix, _, last = meta.name.rpartition(".")
            if last in WEIGHT_SCALES:
                weight = metas.get(f"{prefix}.weight")
                if weight is None or weight.dtype not in FLOAT8:
                    stored = "is missing" if weight is None else f"is stored as {weight.dtype}"
                    raise ModelLoadError(
                        f"checkpoint tensor '{meta.name}' scales '{prefix}.weight', which "
                        f"{stored}; ember dequantizes float8 weights only, and this checkpoint "
                        "does not match its quantization_config"
                    )
            if meta.dtype not in FLOAT8:
                continue
            if last != "weight" or len(meta.shape) != 2:
                raise ModelLoadError(
                    f"checkpoint tensor '{meta.name}' is stored as {meta.dtype}, and ember "
                    "dequantizes only the float8 weights of linear layers"
                )
            found = [f"{prefix}.{s}" for s in WEIGHT_SCALES if f"{prefix}.{s}" in metas]
            if not found:
                raise ModelLoadError(
                    f"checkpoint tensor '{meta.name}' is stored as {meta.dtype} without a "
                    f"'{meta.name}_scale_inv' or '{meta.name}_scale' beside it; ember serves "
                    f"FP8 checkpoints ({fmt.method}) whose linear weights carry scales"
                )
            if len(found) > 1:
                raise ModelLoadError(
                    f"checkpoint tensor '{meta.name}' has two scales, {found}; the checkpoint "
                    "is corrupt"
                )
            rows, cols = meta.shape
            scale_meta = metas[found[0]]
            if _layout(scale_meta.shape, rows, cols, fmt.block) is None:
                raise ModelLoadError(
                    f"checkpoint tensor '{scale_meta.name}' has shape {list(scale_meta.shape)}, "
                    f"which fits no scale layout of '{meta.name}' {[rows, cols]} "
                    f"({_expected(rows, cols, fmt.block)}); the weights do not match "
                    "config.json's quantization_config"
                )
            scale_of[meta.name] = found[0]
        return cls(fmt, scale_of)

    def keep_scales(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """The streamed tensors less the scales (kept for `dequantize`) and the activation
        scales (dropped)."""
        wanted = set(self.scale_of.values())
        for name, tensor in weights:
            if name in wanted:
                self.scales[name] = tensor
            elif name.rpartition(".")[2] not in ACTIVATION_SCALES:
                yield name, tensor

    def dequantize(
        self, slots: dict[str, WeightSlot], rename: Callable[[str], str | None] | None
    ) -> int:
        """Scale every float8 weight that the model holds (in `slots`, under `rename`d names),
        in place; returns how many. Weights that the model does not use (a tied head, a vision
        tower) are skipped, as load_weights skipped them."""
        done = 0
        for weight, scale_name in self.scale_of.items():
            ours = weight if rename is None else rename(weight)
            slot = None if ours is None else slots.get(ours)
            if slot is None:
                continue
            scale = self.scales.pop(scale_name, None)
            if scale is None:
                raise ModelLoadError(f"checkpoint tensor '{scale_name}' never arrived")
            scale_in_place(slot.target(), scale, self.format.block)
            done += 1
        self.scales.clear()
        return done


def scale_in_place(
    weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None
) -> None:
    """weight[i, j] *= scale of (i, j), in float32, rounded once to weight's dtype. `scale` is
    one value, one per row ([rows] or [rows, 1]) or one per `block` (edge blocks ragged)."""
    rows, cols = weight.shape
    layout = _layout(tuple(scale.shape), rows, cols, block)
    assert layout is not None, (tuple(scale.shape), rows, cols, block)
    factors = scale.float()
    step = max(1, SLICE_ELEMENTS // max(cols, 1))
    if layout == "block":
        assert block is not None
        step = max(block[0], step // block[0] * block[0])  # slices start on a block's first row
    with torch.no_grad():
        for start in range(0, rows, step):
            part = weight[start : start + step]
            n = part.shape[0]
            if layout == "tensor":
                factor = factors.reshape(1, 1)
            elif layout == "channel":
                factor = factors.reshape(rows, 1)[start : start + n]
            else:
                assert block is not None
                first = start // block[0]
                grid = factors[first : first + math.ceil(n / block[0])]
                factor = grid.repeat_interleave(block[0], 0)[:n].repeat_interleave(block[1], 1)
                factor = factor[:, :cols]
            part.copy_(part.float().mul_(factor))


def _layout(
    shape: tuple[int, ...], rows: int, cols: int, block: tuple[int, int] | None
) -> str | None:
    """How a scale of `shape` covers a [rows, cols] weight: "block", "tensor", "channel", or
    None when it fits none (a per-tensor scale fits whatever the config says of blocks)."""
    if block is not None and shape == (math.ceil(rows / block[0]), math.ceil(cols / block[1])):
        return "block"
    if math.prod(shape) == 1:
        return "tensor"
    if shape in ((rows,), (rows, 1)):
        return "channel"
    return None


def _expected(rows: int, cols: int, block: tuple[int, int] | None) -> str:
    layouts = ["[] or [1] per tensor", f"[{rows}, 1] per channel"]
    if block is not None:
        grid = [math.ceil(rows / block[0]), math.ceil(cols / block[1])]
        layouts.insert(0, f"{grid} for {block[0]}x{block[1]} blocks")
    return ", ".join(layouts)
