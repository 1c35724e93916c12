"""An FP8 checkpoint (compressed-tensors, per-channel, lm_head ignored) through the offline LLM
API: greedy tokens equal transformers' on the dequantized weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ember import LLM, SamplingParams
from ember.registry import ModelStore, default_home
from tests.models.fp8_checkpoints import SCHEMES, reference_model, write_fp8

from .hf_models import TOKENIZER_FILES, build_config, hf_greedy

PROMPTS = [[5, 17, 42, 99, 7, 3, 250, 11], [300, 12, 8, 64, 21]]


def test_fp8_checkpoint_generates_as_transformers(tmp_path: Path) -> None:
    import transformers as tf

    tiny = ModelStore(default_home()).resolve("tiny").path
    vocab = json.loads((tiny / "config.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    hf = tf.AutoModelForCausalLM.from_config(build_config("qwen3", vocab)).float().eval()
    path = tmp_path / "fp8"
    reference = write_fp8(hf, path, SCHEMES["ct-channel"])
    hf = reference_model(hf, path, reference, tmp_path / "reference")
    for name in TOKENIZER_FILES:
        if (tiny / name).exists():
            shutil.copy(tiny / name, path / name)
    llm = LLM(str(path), device="cpu", block_size=4)
    greedy = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], greedy)
    for prompt, out in zip(PROMPTS, outs, strict=True):
        assert out.outputs[0].token_ids == hf_greedy(hf, prompt, 8)
