"""Building a model for its weights to stream into: modules on the meta device, then every
parameter placed in one uninitialised allocation on the target device.

Built directly on the H200, the Llama-3.1-8B shape took 52-168 ms (each parameter its own
allocation, the rotary tables computed by the first kernels the process launches) before a byte
could stream; built here, 13-26 ms, of which one 16 GB allocation takes ~1 ms
(`benchmarks/profile_build.py`, docs/benchmarks.md, ninth session). Buffers that modules compute
(the rotary tables) are left empty on the meta device, never computed there (ops such as arange
and cos have Python meta kernels whose first use imports sympy: seconds), until
`materialize_buffers`, which the loader runs on a thread beside the stream.
"""

from __future__ import annotations

import torch
from torch import nn

from ember.models.base import CausalLM
from ember.models.config import ModelConfig
from ember.models.registry import get_model_class

ALIGNMENT = 256  # bytes; every parameter starts on it (cuBLAS and Triton want 16 at least)


def build_model(config: ModelConfig, dtype: torch.dtype, device: torch.device) -> CausalLM:
    """The model of `config` with floating parameters in `dtype` on `device`, uninitialised,
    and its computed buffers still on the meta device (see materialize_buffers)."""
    model_class = get_model_class(config)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = model_class(config)
    finally:
        torch.set_default_dtype(previous)
    place_parameters(model, device, alone=model.droppable_parameters())
    return model


def place_parameters(
    module: nn.Module, device: torch.device, alone: tuple[str, ...] = ()
) -> torch.Tensor | None:
    """Give every distinct meta parameter of `module` uninitialised storage on `device`: one
    allocation, each parameter a view into it at an ALIGNMENT boundary, shared parameters (tied
    embeddings) still shared. Parameters named in `alone` get an allocation of their own, so that
    a model which drops one after loading frees its memory. Returns the shared allocation."""
    placed: dict[int, nn.Parameter] = {}
    shared: list[tuple[nn.Parameter, int]] = []
    offset = 0
    for name, param in module.named_parameters():
        if not param.is_meta:
            continue
        if name in alone:
            data = torch.empty(param.shape, dtype=param.dtype, device=device)
            placed[id(param)] = nn.Parameter(data, requires_grad=param.requires_grad)
            continue
        offset = -(-offset // ALIGNMENT) * ALIGNMENT
        shared.append((param, offset))
        offset += param.numel() * param.element_size()
    flat = torch.empty(offset, dtype=torch.uint8, device=device) if shared else None
    for param, start in shared:
        assert flat is not None
        nbytes = param.numel() * param.element_size()
        data = flat[start : start + nbytes].view(param.dtype).view(param.shape)
        placed[id(param)] = nn.Parameter(data, requires_grad=param.requires_grad)
    for sub in module.modules():
        for key, old in sub._parameters.items():
            if old is not None and id(old) in placed:
                sub._parameters[key] = placed[id(old)]
    return flat


def materialize_buffers(module: nn.Module, device: torch.device) -> None:
    """Compute on `device` the buffers that the modules left on the meta device: each module
    that holds one recomputes its own through `materialize_buffers(device)`."""
    for sub in module.modules():
        if not any(b.is_meta for b in sub.buffers(recurse=False)):
            continue
        fill = getattr(sub, "materialize_buffers", None)
        if fill is None:
            raise TypeError(
                f"{type(sub).__name__} has buffers on the meta device and no "
                "materialize_buffers(device) to compute them"
            )
        fill(device)
