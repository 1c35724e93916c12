"""Writing GGUF files from tiny transformers models with gguf's writer, the way llama.cpp's
converter lays them out (q/k rows permuted for the `llama` architecture, Gemma norms stored as
1 + weight, 1-D tensors in F32), with a chosen quant type per 2-D tensor.

Quantizing changes the weights, so `write_gguf` also puts the dequantized values back into the
transformers model: it is then the reference for what ember must compute from the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from torch import nn

from .gguf_blocks import random_blocks

Q = gguf.GGMLQuantizationType
# Types gguf cannot quantize to: the file gets random blocks with small scales instead.
_K_QUANTS = (Q.Q4_K, Q.Q5_K, Q.Q6_K)

_ARCH = {"llama": "llama", "qwen2": "qwen2", "gemma2": "gemma2", "gemma3_text": "gemma3"}
_MODEL_ARCH = {
    "llama": gguf.MODEL_ARCH.LLAMA,
    "qwen2": gguf.MODEL_ARCH.QWEN2,
    "gemma2": gguf.MODEL_ARCH.GEMMA2,
    "gemma3": gguf.MODEL_ARCH.GEMMA3,
}


def tiny_vocab(tokenizer_json: Path) -> dict[str, Any]:
    """The tiny model's byte-level BPE tokenizer as tokenizer.ggml.* values."""
    raw = json.loads(tokenizer_json.read_text())
    size = len(raw["model"]["vocab"]) + len(raw["added_tokens"])
    tokens = [""] * size
    types = [1] * size
    for tok, i in raw["model"]["vocab"].items():
        tokens[i] = tok
    for added in raw["added_tokens"]:
        tokens[added["id"]] = added["content"]
        types[added["id"]] = 3
    merges = [m if isinstance(m, str) else " ".join(m) for m in raw["model"]["merges"]]
    return {"tokens": tokens, "types": types, "merges": merges}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def _add_yarn(w: gguf.GGUFWriter, rope: dict[str, Any]) -> None:
    """The YaRN keys llama.cpp's convert_hf_to_gguf.py writes from an HF rope dict."""
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(rope["factor"])
    w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    if rope.get("beta_fast") is not None:
        w.add_rope_scaling_yarn_beta_fast(rope["beta_fast"])
    if rope.get("beta_slow") is not None:
        w.add_rope_scaling_yarn_beta_slow(rope["beta_slow"])


def write_gguf(
    hf: nn.Module,
    path: Path,
    vocab: dict[str, Any],
    qtypes: dict[str, Any],
    chat_template: str | None = None,
    rope_freqs: list[float] | None = None,
) -> None:
    """qtypes: HF-name substring -> quant type for 2-D tensors (first match; F32 otherwise)."""
    cfg: Any = hf.config  # type: ignore[assignment]
    arch = _ARCH[cfg.model_type]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope = cfg.rope_parameters
    if arch == "gemma3":
        w.add_rope_freq_base(rope["full_attention"]["rope_theta"])
        if rope["full_attention"].get("rope_type") == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(rope["full_attention"]["factor"])
    else:
        w.add_rope_freq_base(rope["rope_theta"])
        if rope.get("rope_type") == "yarn":
            _add_yarn(w, rope)
    if arch in ("gemma2", "gemma3"):
        w.add_sliding_window(cfg.sliding_window)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    w.add_token_merges(vocab["merges"])
    w.add_add_bos_token(True)
    w.add_bos_token_id(cfg.bos_token_id if cfg.bos_token_id is not None else 0)
    w.add_eos_token_id(cfg.eos_token_id if isinstance(cfg.eos_token_id, int) else 1)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, dtype=np.float32))
    name_map = gguf.get_tensor_name_map(_MODEL_ARCH[arch], cfg.num_hidden_layers)
    state = hf.state_dict()
    tied = cfg.tie_word_embeddings
    for seed, (name, tensor) in enumerate(state.items()):
        if tied and name == "lm_head.weight":
            continue
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, name
        data = tensor.float().numpy()
        qtype = next((q for key, q in qtypes.items() if key in name), Q.F32)
        if data.ndim == 1 or qtype == Q.F32:
            stored, exact = data, data
        elif qtype in _K_QUANTS:
            rows, cols = data.shape
            stored = random_blocks(qtype, rows, cols, seed, scale=(0.0005, 0.002))
            exact = gguf.quants.dequantize(stored, qtype).reshape(data.shape)
        else:
            stored = gguf.quants.quantize(data, qtype)
            exact = gguf.quants.dequantize(stored, qtype).reshape(data.shape)
        with torch.no_grad():
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(exact)))
        if arch in ("gemma2", "gemma3") and name.endswith("norm.weight"):
            stored = stored + 1.0
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
            stored = _permute(stored, heads)
        w.add_tensor(
            gguf_name,
            np.ascontiguousarray(stored),
            raw_dtype=None if qtype == Q.F32 or stored.ndim == 1 else qtype,
        )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
