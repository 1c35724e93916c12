"""The built-in `tiny` model: a 2-layer random-weight Llama in Hugging Face format, so that
`ember run tiny` and the tests work with no download.

The weights come from a fixed torch.Generator seed and the tokenizer from package data, so every
machine creates byte-identical weight and tokenizer files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from ember.errors import ModelLoadError
from ember.registry.names import ModelName

TINY_NAME = ModelName("tiny")
SEED = 20240917
INIT_STD = 0.02

HIDDEN = 64
INTERMEDIATE = 192
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 16
MAX_POSITIONS = 4096

BOS = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
EOT = "<|eot_id|>"
SPECIAL_TOKENS = (BOS, END_OF_TEXT, "<|start_header_id|>", "<|end_header_id|>", EOT)


def _data(name: str) -> bytes:
    return resources.files("ember.registry").joinpath("data").joinpath(name).read_bytes()


def _token_ids(tokenizer_json: bytes) -> tuple[int, dict[str, int]]:
    """Vocabulary size (with added tokens) and the ids of the special tokens."""
    spec = json.loads(tokenizer_json)
    ids = {t["content"]: int(t["id"]) for t in spec["added_tokens"]}
    size = max(len(spec["model"]["vocab"]), max(ids.values()) + 1)
    return size, {t: ids[t] for t in SPECIAL_TOKENS}


def _config(vocab_size: int, ids: dict[str, int]) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "vocab_size": vocab_size,
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": INIT_STD,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "bos_token_id": ids[BOS],
        "eos_token_id": [ids[EOT], ids[END_OF_TEXT]],
    }


def _tokenizer_config(ids: dict[str, int]) -> dict[str, Any]:
    added = {
        str(ids[t]): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    return {
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "eos_token": EOT,
        "chat_template": _data("tiny_chat_template.jinja").decode(),
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": MAX_POSITIONS,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def _tensor_shapes(vocab_size: int) -> list[tuple[str, tuple[int, ...]]]:
    """Hugging Face Llama names and shapes ([out, in] for linears), in generation order."""
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("model.embed_tokens.weight", (vocab_size, HIDDEN))
    ]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes += [
            (p + "self_attn.q_proj.weight", (q, HIDDEN)),
            (p + "self_attn.k_proj.weight", (kv, HIDDEN)),
            (p + "self_attn.v_proj.weight", (kv, HIDDEN)),
            (p + "self_attn.o_proj.weight", (HIDDEN, q)),
            (p + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
            (p + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
        ]
    shapes += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (vocab_size, HIDDEN))]
    return shapes


def _write_weights(file: Path, vocab_size: int) -> None:
    import torch  # lazily: `ember list` must not pay for importing torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(SEED)
    tensors = {}
    for name, shape in _tensor_shapes(vocab_size):
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(shape)
        else:
            tensors[name] = torch.randn(shape, generator=generator) * INIT_STD
    save_file(tensors, str(file), metadata={"format": "pt"})
    os.chmod(file, 0o644)  # like the other files; safetensors writes it private


def _write_json(file: Path, data: dict[str, Any]) -> None:
    file.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tiny(path: Path) -> None:
    """Write the tiny model's files into the existing, empty folder `path`."""
    tokenizer_json = _data("tiny_tokenizer.json")
    vocab_size, ids = _token_ids(tokenizer_json)
    (path / "tokenizer.json").write_bytes(tokenizer_json)
    _write_json(path / "config.json", _config(vocab_size, ids))
    _write_json(path / "tokenizer_config.json", _tokenizer_config(ids))
    _write_json(
        path / "generation_config.json",
        {"bos_token_id": ids[BOS], "eos_token_id": [ids[EOT], ids[END_OF_TEXT]]},
    )
    _write_json(path / "params.json", {"num_predict": 128})
    _write_weights(path / "model.safetensors", vocab_size)


def ensure_tiny(models_dir: Path) -> Path:
    """The tiny model's folder under `models_dir`, created if missing.

    Files are written into a hidden temp folder next to the target and renamed into place, so
    concurrent starters never see a half-written model: one rename wins, the others discard
    their copy.
    """
    target = models_dir / TINY_NAME.relpath
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        write_tiny(tmp)
        os.rename(tmp, target)
    except OSError as exc:
        if not (target / "config.json").is_file():
            raise ModelLoadError(
                f"cannot create the built-in tiny model in {target} ({exc}); "
                f"remove {target} and try again"
            ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
