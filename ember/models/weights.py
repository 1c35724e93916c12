"""Mapping Hugging Face checkpoint tensor names onto a model's (possibly fused) parameters."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ember.errors import ModelLoadError
from ember.layers.linear import MergedLinear
from ember.loader import TensorMeta


@dataclass(slots=True)
class WeightSlot:
    """Rows [start, start + rows) of a parameter; rows None means the whole parameter."""

    param: nn.Parameter
    start: int = 0
    rows: int | None = None

    def target(self) -> torch.Tensor:
        data = self.param.data
        return data if self.rows is None else data.narrow(0, self.start, self.rows)


def checkpoint_slots(model: nn.Module) -> dict[str, WeightSlot]:
    """Checkpoint name -> slot for every parameter; a parameter shared by two modules (tied
    embeddings) is listed once, under the first name."""
    slots: dict[str, WeightSlot] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, MergedLinear):
            parent = module_name.rpartition(".")[0]
            parent_prefix = f"{parent}." if parent else ""
            for shard, start, rows in module.shard_rows():
                for pname, param in module.named_parameters(recurse=False):
                    slots[f"{parent_prefix}{shard}.{pname}"] = WeightSlot(param, start, rows)
            continue
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            slots[prefix + pname] = WeightSlot(param)
    return slots


def in_place(
    slots: dict[str, WeightSlot], rename: Callable[[str], str | None] | None = None
) -> Callable[[TensorMeta], torch.Tensor | None]:
    """The streamer's destination for each checkpoint tensor: its slot's storage, so that bytes
    land in the parameter directly (rows of a fused q/k/v or gate/up included). Tensors without a
    slot get none and arrive as separate tensors for load_into_slots to judge.

    `rename` maps a checkpoint name to the model's (None: not used), for models whose checkpoints
    name tensors differently (the model's `checkpoint_name`)."""

    def resolve(meta: TensorMeta) -> torch.Tensor | None:
        name = meta.name if rename is None else rename(meta.name)
        slot = None if name is None else slots.get(name)
        if slot is None:
            return None
        return slot.target()  # of another shape, the streamer refuses it, naming the file

    return resolve


def load_into_slots(
    slots: dict[str, WeightSlot],
    weights: Iterable[tuple[str, torch.Tensor]],
    skip: Callable[[str], bool],
    architecture: str,
) -> set[str]:
    """Copy each tensor into its slot (casting dtype, moving device) unless it already is the
    slot's storage; returns the names loaded."""
    loaded: set[str] = set()
    for name, tensor in weights:
        if skip(name):
            continue
        slot = slots.get(name)
        if slot is None:
            raise ModelLoadError(
                f"checkpoint tensor '{name}' has no place in {architecture}; the weights do not "
                "match config.json"
            )
        target = slot.target()
        if target.shape != tensor.shape:
            raise ModelLoadError(
                f"checkpoint tensor '{name}' has shape {list(tensor.shape)} but {architecture} "
                f"with this config.json expects {list(target.shape)}"
            )
        if not _is_view_of(tensor, target):  # else it was streamed in place already
            with torch.no_grad():
                target.copy_(tensor)
        loaded.add(name)
    return loaded


def _is_view_of(tensor: torch.Tensor, target: torch.Tensor) -> bool:
    return (
        tensor.data_ptr() == target.data_ptr()
        and tensor.device == target.device
        and tensor.dtype == target.dtype
        and tensor.stride() == target.stride()
    )


def raise_if_missing(slots: dict[str, WeightSlot], loaded: set[str]) -> None:
    missing = sorted(set(slots) - loaded)
    if missing:
        shown = ", ".join(f"'{m}'" for m in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ModelLoadError(
            f"checkpoint is missing tensor {shown}{more}; the weight files are incomplete or do "
            "not match config.json"
        )
