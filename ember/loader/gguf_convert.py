"""A GGUF file as the Hugging Face-style model folder the engine loads: config.json,
*.safetensors (dequantized to one dtype), tokenizer.json, tokenizer_config.json (with the file's
chat template) and generation_config.json.

Dequantizing is done once, when the folder is written (bf16 by default: 2 bytes a parameter on
disk): each tensor's quantized bytes go to the GPU (the CPU where there is none), are dequantized
there to the folder's dtype, and only the result comes back to be saved.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ember.loader.gguf_model import GGUFModel
from ember.loader.gguf_tokenizer import tokenizer_from_gguf

SHARD_BYTES = 2 * 2**30
_TOKENIZER_KEYS = (
    "model",
    "pre",
    "tokens",
    "token_type",
    "scores",
    "merges",
    "bos_token_id",
    "eos_token_id",
    "unknown_token_id",
    "padding_token_id",
    "add_bos_token",
    "add_space_prefix",
)


# Tokens that end a turn in chat templates: generation stops at them as at EOS (llama.cpp counts
# them among its end-of-generation tokens), whatever the file's eos_token_id says.
_END_OF_TURN = ("<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>")


def _stop_ids(model: GGUFModel, tok_meta: dict[str, Any]) -> list[int]:
    """The ids that end generation: EOS, the file's end-of-turn and end-of-message tokens
    (tokenizer.ggml.eot_token_id / eom_token_id), and the known end-of-turn tokens it holds (a
    Gemma GGUF whose EOS is <eos> still stops at <end_of_turn>)."""
    ids = [
        tok_meta["eos_token_id"],
        model.meta("tokenizer.ggml.eot_token_id"),
        model.meta("tokenizer.ggml.eom_token_id"),
    ]
    ids += [i for i, t in enumerate(tok_meta["tokens"] or ()) if t in _END_OF_TURN]
    return sorted({int(i) for i in ids if i is not None})


def write_model_dir(
    gguf_path: str | Path,
    out_dir: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str | None = None,
) -> Path:
    """Write the folder for `gguf_path` into out_dir (replaced whole, atomically by rename) and
    return it; tensors are dequantized on device (default: CUDA if available, else the CPU).
    Raises ModelLoadError for an architecture, tensor or tokenizer it cannot map."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = GGUFModel.open(gguf_path)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        config = model.hf_config()
        _write_weights(model, config, tmp, dtype, torch.device(device))
        config["torch_dtype"] = str(dtype).removeprefix("torch.")
        tok_meta = {k: model.meta(f"tokenizer.ggml.{k}") for k in _TOKENIZER_KEYS}
        tokenizer_from_gguf(tok_meta).save(str(tmp / "tokenizer.json"))
        _write_json(tmp / "tokenizer_config.json", _tokenizer_config(model, tok_meta))
        _write_json(
            tmp / "generation_config.json",
            {"bos_token_id": tok_meta["bos_token_id"], "eos_token_id": _stop_ids(model, tok_meta)},
        )
        _write_json(tmp / "config.json", config)  # last: its presence marks a model folder
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _hf_names(config: dict[str, Any]) -> list[str]:
    # The checkpoint names the architecture expects, from the model built on the meta device.
    from ember.models.config import ModelConfig
    from ember.models.registry import get_model_class
    from ember.models.weights import checkpoint_slots

    model_config = ModelConfig.from_dict(config, source="GGUF metadata")
    with torch.device("meta"):
        model = get_model_class(model_config)(model_config)
    names = list(checkpoint_slots(model))
    if not model_config.tie_word_embeddings:
        names.append("lm_head.weight")
    return names


def _write_weights(
    model: GGUFModel, config: dict[str, Any], out: Path, dtype: torch.dtype, device: torch.device
) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in model.tensors(_hf_names(config), device, dtype):
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        # One tensor at a time on the device: the whole model never has to fit there.
        shards[-1][name] = tensor.cpu().contiguous()
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    _write_json(out / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})


def _tokenizer_config(model: GGUFModel, tok_meta: dict[str, Any]) -> dict[str, Any]:
    tokens: list[str] = list(tok_meta["tokens"] or [])
    config: dict[str, Any] = {}
    for key, id_key in (
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ):
        index = tok_meta[id_key]
        if isinstance(index, int) and 0 <= index < len(tokens):
            config[key] = tokens[index]
    template = model.meta("tokenizer.chat_template")
    if isinstance(template, str):
        config["chat_template"] = template
    return config


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")
