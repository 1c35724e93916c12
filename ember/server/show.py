"""What /api/show reports about a model beyond its store entry: `model_info` (Ollama's GGUF-style
keys, from config.json) and `capabilities` (from the chat template and tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ember.tokenizer import Tokenizer
from ember.tokenizer.reasoning import supports_thinking
from ember.tokenizer.tool_calls import might_call_tools

# config.json field -> Ollama's model_info key suffix ("{architecture}.{suffix}").
_INFO_KEYS = (
    ("hidden_size", "embedding_length"),
    ("num_hidden_layers", "block_count"),
    ("num_attention_heads", "attention.head_count"),
    ("num_key_value_heads", "attention.head_count_kv"),
    ("intermediate_size", "feed_forward_length"),
    ("rms_norm_eps", "attention.layer_norm_rms_epsilon"),
    ("rope_theta", "rope.freq_base"),
    ("sliding_window", "attention.sliding_window"),
    ("vocab_size", "vocab_size"),
)
_FIM = ("<|fim_prefix|>", "<fim_prefix>", "<|fim_begin|>")


def _config(model_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    return {**config, **(config.get("text_config") or {})}  # Gemma 3 nests the LM's fields


def model_info(model_dir: Path, architecture: str, context_length: int) -> dict[str, Any]:
    config = _config(model_dir)
    arch = architecture or str(config.get("model_type", ""))
    info: dict[str, Any] = {"general.architecture": arch, f"{arch}.context_length": context_length}
    for theirs, ours in _INFO_KEYS:
        if isinstance(config.get(theirs), int | float):
            info[f"{arch}.{ours}"] = config[theirs]
    return info


def capabilities(tok: Tokenizer) -> list[str]:
    """Ollama's names: completion, tools, thinking, insert (fill-in-the-middle)."""
    template = tok.chat_template or ""
    caps = ["completion"]
    if might_call_tools(template):
        caps.append("tools")
    if supports_thinking(template):
        caps.append("thinking")
    if any(tok.token_to_id(t) is not None for t in _FIM):
        caps.append("insert")
    return caps
