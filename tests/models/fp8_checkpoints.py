"""FP8 checkpoints written the way the Hub's are, from a transformers model: its projections'
weights replaced by float8_e4m3fn tensors with scales (per tensor, per channel or per block,
edge blocks ragged), quantization_config added to config.json; lm_head and embeddings stay
unquantized, as every published FP8 checkpoint leaves them. The reference dequantization here
loops over blocks on purpose, to share no code with ember's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

FP8_MAX = 448.0  # float8_e4m3fn


@dataclass(frozen=True)
class Scheme:
    config: dict[str, Any]  # quantization_config
    scale_name: str  # weight_scale_inv or weight_scale
    layout: str  # tensor, channel or block
    block: tuple[int, int] | None = None
    scale_dtype: torch.dtype = torch.float32
    scalar: bool = False  # a per-tensor scale of shape [] rather than [1]
    activation_scales: tuple[str, ...] = ()  # written beside each quantized weight
    kv_scales: bool = False  # k_scale / v_scale in each layer's self_attn


def _ct(strategy: str, fmt: str = "float-quantized", **weights: Any) -> dict[str, Any]:
    group = {
        "targets": ["Linear"],
        "weights": {
            "num_bits": 8,
            "type": "float",
            "symmetric": True,
            "strategy": strategy,
            "dynamic": False,
            **weights,
        },
        "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True},
    }
    return {
        "quant_method": "compressed-tensors",
        "format": fmt,
        "config_groups": {"group_0": group},
        "ignore": ["lm_head"],
        "kv_cache_scheme": None,
        "quantization_status": "compressed",
    }


SCHEMES: dict[str, Scheme] = {
    # Qwen3-*-FP8's layout, with blocks that leave ragged edges on every tiny weight
    "fp8-block": Scheme(
        {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [40, 24]},
        "weight_scale_inv",
        "block",
        (40, 24),
    ),
    # the real block size: each tiny weight is one ragged block
    "fp8-block-128": Scheme(
        {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]},
        "weight_scale_inv",
        "block",
        (128, 128),
    ),
    # AutoFP8 (neuralmagic's first FP8 checkpoints): static activations, scalar scales
    "fp8-tensor": Scheme(
        {"quant_method": "fp8", "activation_scheme": "static", "ignored_layers": ["lm_head"]},
        "weight_scale",
        "tensor",
        scalar=True,
        activation_scales=("input_scale",),
    ),
    "fbgemm-channel": Scheme(
        {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0},
        "weight_scale",
        "channel",
        activation_scales=("input_scale_ub",),
    ),
    "ct-tensor": Scheme(
        _ct("tensor"), "weight_scale", "tensor", scale_dtype=torch.bfloat16, kv_scales=True
    ),
    "ct-channel": Scheme(_ct("channel", "naive-quantized"), "weight_scale", "channel"),
    "ct-block": Scheme(
        _ct("block", block_structure=[40, 24]),
        "weight_scale",
        "block",
        (40, 24),
        scale_dtype=torch.bfloat16,
    ),
}


def factors(
    scale: torch.Tensor, rows: int, cols: int, block: tuple[int, int] | None
) -> torch.Tensor:
    """The float32 scale of every element of a [rows, cols] weight."""
    out = torch.empty(rows, cols)
    s = scale.float()
    if block is not None:
        for bi, i in enumerate(range(0, rows, block[0])):
            for bj, j in enumerate(range(0, cols, block[1])):
                out[i : i + block[0], j : j + block[1]] = s[bi, bj]
    elif s.numel() == 1:
        out[:] = s.reshape(())
    else:
        out[:] = s.reshape(rows, 1)
    return out


def quantize(w: torch.Tensor, scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8 weight, scale) with each scale the max |w| it covers over FP8_MAX."""
    rows, cols = w.shape
    a = w.abs().float()
    if scheme.layout == "tensor":
        amax = a.max().reshape(() if scheme.scalar else (1,))
    elif scheme.layout == "channel":
        amax = a.amax(dim=1, keepdim=True)
    else:
        assert scheme.block is not None
        b0, b1 = scheme.block
        amax = torch.stack(
            [
                torch.stack([a[i : i + b0, j : j + b1].max() for j in range(0, cols, b1)])
                for i in range(0, rows, b0)
            ]
        )
    scale = (amax / FP8_MAX).to(scheme.scale_dtype)
    f = factors(scale, rows, cols, scheme.block)
    wq = (w.float() / f).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return wq, scale


def dequantized(wq: torch.Tensor, scale: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """W = Wq * scale in float32 (cast to the model's dtype after, once)."""
    rows, cols = wq.shape
    return wq.float() * factors(scale, rows, cols, scheme.block)


def is_quantized(name: str) -> bool:
    """The decoder layers' projections (under language_model in Gemma 3's multimodal
    checkpoints) and, to check that ember skips what it does not use, the vision tower's."""
    return "layers." in name and name.endswith("_proj.weight")


def write_fp8(hf: nn.Module, path: Path, scheme: Scheme) -> dict[str, torch.Tensor]:
    """Save `hf` into `path` as an FP8 checkpoint of `scheme` (other tensors in bf16); returns
    the float32 reference dequantization of each quantized weight, by checkpoint name."""
    hf.save_pretrained(str(path))  # type: ignore[operator]
    file = path / "model.safetensors"
    tensors = load_file(str(file))
    out: dict[str, torch.Tensor] = {}
    reference: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not is_quantized(name):
            out[name] = tensor.to(torch.bfloat16)
            continue
        wq, scale = quantize(tensor, scheme)
        module = name.removesuffix(".weight")
        out[name] = wq
        out[f"{module}.{scheme.scale_name}"] = scale
        for extra in scheme.activation_scales:
            out[f"{module}.{extra}"] = torch.tensor(0.05)
        reference[name] = dequantized(wq, scale, scheme)
        if scheme.kv_scales and name.endswith("self_attn.k_proj.weight"):
            attn = module.removesuffix(".k_proj")
            out[f"{attn}.k_scale"] = torch.tensor(1.0)
            out[f"{attn}.v_scale"] = torch.tensor(1.0)
    save_file(out, str(file), metadata={"format": "pt"})
    raw = json.loads((path / "config.json").read_text())
    raw["quantization_config"] = scheme.config
    (path / "config.json").write_text(json.dumps(raw))
    return reference


def reference_model(
    hf: nn.Module, fp8_dir: Path, reference: dict[str, torch.Tensor], out: Path
) -> nn.Module:
    """transformers' model of `hf`'s class holding the checkpoint in `fp8_dir` dequantized: the
    reference weights, the other tensors as stored (bf16), in float32. Loaded from a checkpoint
    written into `out`, so that transformers maps the names as on any load (Gemma 3's
    multimodal checkpoints name tensors differently from the model's parameters)."""
    out.mkdir(parents=True)
    plain = {
        name: tensor.float()
        for name, tensor in load_file(str(fp8_dir / "model.safetensors")).items()
        if tensor.dtype != torch.float8_e4m3fn and not name.endswith(_SCALE_ENDINGS)
    }
    plain.update(reference)
    save_file(plain, str(out / "model.safetensors"), metadata={"format": "pt"})
    raw = json.loads((fp8_dir / "config.json").read_text())
    del raw["quantization_config"]
    (out / "config.json").write_text(json.dumps(raw))
    return type(hf).from_pretrained(str(out), dtype=torch.float32).eval()  # type: ignore[attr-defined,no-any-return]


_SCALE_ENDINGS = ("_scale", "_scale_inv", "_scale_ub")
