"""FP8 checkpoints (fp8 block-wise and per-tensor, fbgemm_fp8 per-channel, compressed-tensors
per tensor, channel and block) load dequantized: every weight equal to the float32 reference
rounded once to the model's dtype, logits as transformers' on the same dequantized weights,
from a directory and over HTTP range requests. Other quantizations are refused when config.json
is read, before any weight."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn

from ember.errors import ModelLoadError
from ember.loader import StreamOptions
from ember.models import CausalLM, ModelConfig, load_model
from ember.models.fp8 import scale_in_place
from ember.models.weights import checkpoint_slots
from tests.loader.helpers import RangeServer, serve_http

from .fp8_checkpoints import SCHEMES, factors, reference_model, write_fp8
from .helpers import PARITY_SHAPE, PagedCache, gemma3_multimodal, randomize_

CPU = torch.device("cpu")
COMMON: dict[str, Any] = dict(PARITY_SHAPE)
ARCHS: dict[str, Callable[[], nn.Module]] = {
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON)),
    "qwen2-tied": lambda: transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(**COMMON, tie_word_embeddings=True)
    ),
    "qwen3": lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**COMMON, head_dim=32)),
    # Gemma FP8 checkpoints exist (neuralmagic/gemma-2-2b-it-FP8, unsloth/gemma-3-4b-it-FP8-
    # Dynamic; compressed-tensors); tied embeddings.
    "gemma2": lambda: transformers.Gemma2ForCausalLM(
        transformers.Gemma2Config(**COMMON, head_dim=16, sliding_window=6)
    ),
    "gemma3-mm": lambda: gemma3_multimodal(
        {**COMMON, "head_dim": 16, "sliding_window": 6, "vocab_size": 260}
    ),
}
CASES = [
    ("llama", "fp8-block"),
    ("llama", "fp8-block-128"),
    ("llama", "fp8-tensor"),
    ("llama", "fbgemm-channel"),
    ("qwen2-tied", "ct-channel"),
    ("qwen3", "ct-tensor"),
    ("qwen3", "ct-block"),
    ("gemma2", "ct-channel"),
    ("gemma3-mm", "ct-tensor"),
]
TOKENS = [3, 17, 99, 42, 7, 120, 5, 250, 11, 64, 1, 2]


def _make(arch: str, scheme: str, root: Path) -> tuple[Path, nn.Module, dict[str, torch.Tensor]]:
    """(the FP8 checkpoint's directory, transformers' model on the reference weights, the
    reference weights by checkpoint name)."""
    torch.manual_seed(0)
    hf = ARCHS[arch]().float().eval()
    randomize_(hf, seed=1)
    path = root / "fp8"
    reference = write_fp8(hf, path, SCHEMES[scheme])
    return path, reference_model(hf, path, reference, root / "reference"), reference


@pytest.fixture(scope="module", params=CASES, ids=[f"{a}-{s}" for a, s in CASES])
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, nn.Module, dict[str, torch.Tensor]]:
    arch, scheme = request.param
    return _make(arch, scheme, tmp_path_factory.mktemp(f"{arch}-{scheme}"))


def _assert_dequantized(
    model: CausalLM, reference: dict[str, torch.Tensor], dtype: torch.dtype
) -> int:
    """Checks each reference weight that the model holds; returns how many."""
    slots = checkpoint_slots(model)
    rename = getattr(model, "checkpoint_name", lambda name: name)
    held = 0
    for name, want in reference.items():
        ours = rename(name)
        if ours is None:  # a vision tower's
            continue
        got = slots[ours].target()
        assert got.dtype == dtype
        assert torch.equal(got, want.to(dtype)), name
        held += 1
    return held


def _logits(model: CausalLM, tokens: list[int]) -> torch.Tensor:
    cache = PagedCache(model.config, block_size=4)
    input_ids, positions, meta = cache.step([(0, tokens)])
    with torch.inference_mode():
        return model.compute_logits(model(input_ids, positions, cache.kv_caches, meta))


def _hf_logits(hf: nn.Module, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([tokens])).logits[0].float()


def test_weights_and_logits_match_the_reference(
    case: tuple[Path, nn.Module, dict[str, torch.Tensor]], caplog: pytest.LogCaptureFixture
) -> None:
    path, hf, reference = case
    with caplog.at_level(logging.INFO, logger="ember.models.loader"):
        model = load_model(path, torch.float32, CPU)
    held = _assert_dequantized(model, reference, torch.float32)
    assert held == sum(".layers." in n and "vision" not in n for n in reference)
    torch.testing.assert_close(_logits(model, TOKENS), _hf_logits(hf, TOKENS), atol=1e-4, rtol=0)
    line = next(r.getMessage() for r in caplog.records if "FP8 checkpoint" in r.getMessage())
    assert f"{held} weights dequantized to float32" in line


def test_bf16_rounds_once(case: tuple[Path, nn.Module, dict[str, torch.Tensor]]) -> None:
    path, _, reference = case
    _assert_dequantized(load_model(path, torch.bfloat16, CPU), reference, torch.bfloat16)


def test_http_range_reads_dequantize_the_same(tmp_path: Path) -> None:
    # Through the pinned ring in chunks smaller than a weight, as from object stores.
    path, hf, reference = _make("qwen3", "fp8-block", tmp_path)
    with serve_http(RangeServer(path, prefix="/m")) as server:
        url = f"http://127.0.0.1:{server.port}/m"
        options = StreamOptions(chunk_bytes=4096, threads=3)
        model = load_model(url, torch.float32, CPU, options=options)
    _assert_dequantized(model, reference, torch.float32)
    torch.testing.assert_close(_logits(model, TOKENS), _hf_logits(hf, TOKENS), atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", [(), (1,), (96,), (96, 1), (3, 3), (1, 1)])
def test_scale_in_place_layouts(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    wq = (torch.randn(96, 64, generator=gen) * 50).to(torch.float8_e4m3fn)
    scale = torch.rand(shape, generator=gen) + 0.01
    block = (40, 24) if len(shape) == 2 and shape[1] != 1 else None
    if shape == (1, 1):
        block = (128, 128)
    weight = wq.to(torch.bfloat16)
    scale_in_place(weight, scale, block)
    want = (wq.float() * factors(scale, 96, 64, block)).to(torch.bfloat16)
    assert torch.equal(weight, want)


def test_scale_in_place_slices_on_block_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    # Slices of a few rows each: every slice must start on a block's first row.
    monkeypatch.setattr("ember.models.fp8.SLICE_ELEMENTS", 64 * 7)
    gen = torch.Generator().manual_seed(1)
    wq = (torch.randn(100, 64, generator=gen) * 50).to(torch.float8_e4m3fn)
    for scale, block in [
        (torch.rand(3, 3, generator=gen), (40, 24)),
        (torch.rand(100, 1, generator=gen), None),
    ]:
        weight = wq.float()
        scale_in_place(weight, scale, block)
        assert torch.equal(weight, wq.float() * factors(scale, 100, 64, block))


# --- what is refused, and when ----------------------------------------------------------------

_INSTEAD = "serve the model's bf16/fp16 checkpoint, its FP8 version, or a GGUF file"
_CT_INT4: dict[str, Any] = {
    "quant_method": "compressed-tensors",
    "format": "pack-quantized",
    "config_groups": {
        "group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128},
        }
    },
}
REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"quant_method": "awq", "bits": 4, "group_size": 128}, "quantization 'awq' (4-bit)"),
    ({"quant_method": "gptq", "bits": 8}, "quantization 'gptq' (8-bit)"),
    (
        {"quant_method": "bitsandbytes", "load_in_4bit": True},
        "quantization 'bitsandbytes' (4-bit)",
    ),
    ({"load_in_8bit": True}, "quantization 'bitsandbytes' (8-bit)"),
    ({"quant_method": "torchao", "quant_type": {}}, "quantization 'torchao'"),
    ({"quant_method": "modelopt", "quant_algo": "NVFP4"}, "quantization 'modelopt'"),
    (
        _CT_INT4,
        "quantization 'compressed-tensors' (4-bit int weights, format 'pack-quantized')",
    ),
    (
        {**SCHEMES["ct-channel"].config, "format": "int-quantized"},
        "quantization 'compressed-tensors' (8-bit float weights, format 'int-quantized')",
    ),
    (
        {**SCHEMES["ct-tensor"].config, "sparsity_config": {"format": "sparse-24-bitmask"}},
        "quantization 'compressed-tensors' with sparse-24-bitmask sparse weights",
    ),
    (
        {"quant_method": "fp8", "weight_block_size": [128, 128], "scale_fmt": "ue8m0"},
        "quantization 'fp8' with scale_fmt 'ue8m0'",
    ),
]


def _tiny_config(quant: dict[str, Any]) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 256,
        "quantization_config": quant,
    }


@pytest.mark.parametrize("quant,what", REFUSED, ids=[w for _, w in REFUSED])
def test_other_quantizations_are_refused_with_the_config(
    quant: dict[str, Any], what: str, tmp_path: Path
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(_tiny_config(quant)))
    # A weight file that is not safetensors at all: the refusal comes before it is opened.
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError) as info:
        load_model(tmp_path, torch.float32, CPU)
    assert str(info.value) == f"{what} is not supported; {_INSTEAD}"


def test_fp8_config_is_read() -> None:
    config = ModelConfig.from_dict(_tiny_config(SCHEMES["fp8-block"].config))
    assert config.quantization is not None
    assert (config.quantization.method, config.quantization.block) == ("fp8", (40, 24))
    ct = ModelConfig.from_dict(_tiny_config(SCHEMES["ct-block"].config)).quantization
    assert ct is not None and ct.block == (40, 24)
    assert ModelConfig.from_dict(_tiny_config(SCHEMES["ct-tensor"].config)).quantization


def test_malformed_block_size_names_the_config() -> None:
    raw = _tiny_config({"quant_method": "fp8", "weight_block_size": [128]})
    with pytest.raises(ModelLoadError, match=r"invalid model config 'x/config\.json'.*\[128\]"):
        ModelConfig.from_dict(raw, source="x/config.json")


def _edit(path: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    file = path / "model.safetensors"
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


LAYER0 = "model.layers.0.mlp.down_proj"


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda t: t.pop(f"{LAYER0}.weight_scale_inv"),
            rf"'{LAYER0}\.weight' is stored as torch\.float8_e4m3fn without a "
            rf"'{LAYER0}\.weight_scale_inv' or '{LAYER0}\.weight_scale' beside it",
        ),
        (
            lambda t: t.update({f"{LAYER0}.weight_scale_inv": torch.ones(2, 2)}),
            rf"'{LAYER0}\.weight_scale_inv' has shape \[2, 2\], which fits no scale layout of "
            rf"'{LAYER0}\.weight' \[64, 96\] \(\[2, 4\] for 40x24 blocks",
        ),
        (
            lambda t: t.update({f"{LAYER0}.weight": t[f"{LAYER0}.weight"].to(torch.bfloat16)}),
            rf"'{LAYER0}\.weight_scale_inv' scales '{LAYER0}\.weight', which is stored as "
            r"torch\.bfloat16",
        ),
    ],
    ids=["no-scale", "scale-shape", "scale-of-bf16"],
)
def test_scales_that_do_not_fit_fail_before_the_load(
    edit: Callable[[dict[str, torch.Tensor]], None], message: str, tmp_path: Path
) -> None:
    path, _, _ = _make("llama", "fp8-block", tmp_path)
    _edit(path, edit)
    with pytest.raises(ModelLoadError, match=message):
        load_model(path, torch.float32, CPU)
