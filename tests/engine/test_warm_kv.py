"""Warm KV: `ember warm` saves the KV blocks of common prompts; an engine started on that model
loads them into the prefix cache, so a request beginning with such a prompt hits the cache at
once and generates exactly what a cold engine generates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ember import LLM, SamplingParams
from ember.cli import main as cli_main
from ember.engine.warm_kv import WARM_DIR
from ember.registry import ModelStore, default_home

SYSTEM = "You are ember's test assistant. " * 12  # several 16-token blocks
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    tiny = ModelStore(default_home()).resolve("tiny").path
    out = tmp_path / "model"
    shutil.copytree(tiny, out)
    return out


def chat_ids(llm: LLM) -> list[int]:
    tok = llm.get_tokenizer()
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello"}]
    ids: list[int] = tok.apply_chat_template(messages, add_generation_prompt=True)  # as HF's
    return ids


def test_warm_blocks_are_loaded_and_hit(model_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "warm.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "system", "content": SYSTEM}]}) + "\n")
    assert cli_main(["warm", str(model_dir), "--prompts", str(prompts), "--device", "cpu"]) == 0
    assert (model_dir / WARM_DIR / "kv.safetensors").is_file()

    # `ember warm` writes the dtype a GPU serves (bfloat16 for this float32 checkpoint).
    cold = LLM(str(model_dir), device="cpu", dtype="bfloat16", enable_prefix_caching=False)
    ids = chat_ids(cold)
    expected = cold.generate({"prompt_token_ids": ids}, GREEDY)[0]
    assert expected.num_cached_tokens == 0

    warm = LLM(str(model_dir), device="cpu", dtype="bfloat16")
    assert warm.engine.core.warm_blocks >= 8
    got = warm.generate({"prompt_token_ids": ids}, GREEDY)[0]
    assert got.num_cached_tokens >= 8 * 16
    assert got.outputs[0].token_ids == expected.outputs[0].token_ids


def test_blocks_for_another_dtype_are_skipped_not_fatal(model_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "warm.jsonl"
    prompts.write_text(json.dumps({"prompt": SYSTEM}) + "\n")
    assert cli_main(["warm", str(model_dir), "--prompts", str(prompts), "--device", "cpu"]) == 0
    llm = LLM(str(model_dir), device="cpu", dtype="float32")  # warm blocks are bfloat16
    assert llm.engine.core.warm_blocks == 0
    assert len(llm.generate(SYSTEM, GREEDY)[0].outputs[0].token_ids) == 8


def test_warm_blocks_for_an_fp8_cache(model_dir: Path, tmp_path: Path) -> None:
    """`ember warm --kv-cache-dtype fp8` makes blocks an fp8 server loads (byte copies, which
    index_copy_ cannot do for fp8 on the CPU); a full-precision server skips them."""
    prompts = tmp_path / "warm.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "system", "content": SYSTEM}]}) + "\n")
    argv = ["warm", str(model_dir), "--prompts", str(prompts), "--device", "cpu"]
    assert cli_main([*argv, "--kv-cache-dtype", "fp8"]) == 0
    cold = LLM(
        str(model_dir), device="cpu", dtype="bfloat16", kv_cache_dtype="fp8",
        enable_prefix_caching=False,
    )  # fmt: skip
    ids = chat_ids(cold)
    expected = cold.generate({"prompt_token_ids": ids}, GREEDY)[0]
    warm = LLM(str(model_dir), device="cpu", dtype="bfloat16", kv_cache_dtype="fp8")
    assert warm.engine.core.warm_blocks >= 8
    got = warm.generate({"prompt_token_ids": ids}, GREEDY)[0]
    assert got.num_cached_tokens >= 8 * 16
    assert got.outputs[0].token_ids == expected.outputs[0].token_ids
    assert LLM(str(model_dir), device="cpu", dtype="bfloat16").engine.core.warm_blocks == 0


def test_bad_prompts_file_is_a_clear_error(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "warm.jsonl"
    prompts.write_text("just text\n")
    assert cli_main(["warm", str(model_dir), "--prompts", str(prompts), "--device", "cpu"]) == 1
    assert "warm.jsonl:1: not JSON" in capsys.readouterr().err
