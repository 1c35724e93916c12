"""Tiny random-weight Hugging Face models of each supported architecture, saved with the
built-in tiny model's tokenizer so that ember can load them as model directories."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")

COMMON: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    initializer_range=0.2,
)


def build_config(arch: str, vocab_size: int) -> Any:
    import transformers as tf

    if arch == "llama3":
        return tf.LlamaConfig(
            vocab_size=vocab_size,
            rope_parameters={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
                "rope_theta": 500000.0,
            },
            **COMMON,
        )
    if arch == "qwen2":
        return tf.Qwen2Config(vocab_size=vocab_size, tie_word_embeddings=True, **COMMON)
    if arch == "qwen2-yarn":
        # As Qwen2.5 documents YaRN: max_position_embeddings left at the original context.
        yarn = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}
        small = {**COMMON, "max_position_embeddings": 64}
        return tf.Qwen2Config(vocab_size=vocab_size, rope_parameters=yarn, **small)
    if arch == "qwen3":
        return tf.Qwen3Config(vocab_size=vocab_size, head_dim=16, **COMMON)
    if arch == "mistral":
        return tf.MistralConfig(vocab_size=vocab_size, sliding_window=None, **COMMON)
    if arch == "mistral-window":
        # A window far shorter than the prompts, so every layer masks by it.
        return tf.MistralConfig(vocab_size=vocab_size, sliding_window=8, **COMMON)
    gemma: dict[str, Any] = {**COMMON, "head_dim": 16, "sliding_window": 8}
    if arch == "gemma2":
        # Layer 0 slides, layer 1 is global; caps small enough to bend the values they see.
        config = tf.Gemma2Config(
            vocab_size=vocab_size,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=20.0,
            final_logit_softcapping=15.0,
            **gemma,
        )
        # The attention softcap exists only in transformers' eager attention: 5.17 (the GPU
        # machine's) chose sdpa and dropped the cap, so its prompt logprobs were 0.13 off ember's;
        # 5.25 chooses eager itself.
        config._attn_implementation = "eager"
        return config
    if arch == "gemma3":
        rope = {
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        }
        pattern: dict[str, Any] = {"sliding_window_pattern": 2}  # read from **kwargs only
        return tf.Gemma3TextConfig(vocab_size=vocab_size, rope_parameters=rope, **gemma, **pattern)
    raise ValueError(arch)


def make_hf_model(arch: str, tokenizer_dir: Path, out_dir: Path, seed: int = 0) -> Any:
    """Save a random model of `arch` into out_dir with the tokenizer from tokenizer_dir;
    returns the transformers model (float32, eval)."""
    import json

    import transformers as tf

    vocab = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    config = build_config(arch, vocab)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    for name in TOKENIZER_FILES:
        src = tokenizer_dir / name
        if src.exists():
            shutil.copy(src, out_dir / name)
    return model


def hf_greedy(model: Any, prompt_ids: list[int], n: int) -> list[int]:
    return hf_greedy_with_gaps(model, prompt_ids, n)[0]


def hf_greedy_with_gaps(model: Any, prompt_ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """transformers' greedy tokens (on the model's device) and, per step, the gap between the
    top two raw logits (a small gap is a near-tie that float rounding may flip)."""
    ids = torch.tensor([prompt_ids], device=model.device)
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            # ember's ignore_eos never masks EOS; min_new_tokens would mask the config's
            # eos_token_id to -inf unless it is None.
            eos_token_id=None,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    gaps = [float(s[0].topk(2).values.diff().abs()) for s in out.logits]
    return out.sequences[0, len(prompt_ids) :].tolist(), gaps
