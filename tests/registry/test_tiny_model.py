from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from ember.errors import ModelNotFoundError
from ember.registry import ModelStore
from ember.registry.tiny import ensure_tiny
from ember.tokenizer import IncrementalDetokenizer, Tokenizer

HF_NAMES = {
    "model.embed_tokens.weight",
    "model.norm.weight",
    "lm_head.weight",
    *(
        f"model.layers.{i}.{part}.weight"
        for i in range(2)
        for part in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "input_layernorm",
            "post_attention_layernorm",
        )
    ),
}


def files_of(path: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(path.iterdir())}


def test_tiny_is_created_on_first_resolve_and_reused(store: ModelStore) -> None:
    model = store.resolve("tiny")
    assert model.name == "tiny:latest"
    assert model.path == store.models_dir / "tiny" / "latest"
    weights = model.path / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = store.resolve("tiny:latest")
    assert again.digest == model.digest
    assert weights.stat().st_mtime_ns == stamp
    assert [m.name for m in store.list()] == ["tiny:latest"]
    assert store.params(model) == {"num_predict": 128}
    assert model.details.family == "llama"
    assert model.details.quantization_level == "F32"
    assert model.details.parameter_size == "227K"


def test_other_tiny_tags_are_not_invented(store: ModelStore) -> None:
    with pytest.raises(ModelNotFoundError, match="not found"):
        store.resolve("tiny:7b")


def test_two_homes_get_identical_files(tmp_path: Path) -> None:
    a = ModelStore(tmp_path / "a").resolve("tiny").path
    b = ModelStore(tmp_path / "b").resolve("tiny").path
    assert files_of(a) == files_of(b)
    assert set(files_of(a)) == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "params.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }


def test_creation_is_fast(tmp_path: Path) -> None:
    ensure_tiny(tmp_path / "warm-up")  # imports torch and safetensors
    start = time.perf_counter()
    ensure_tiny(tmp_path / "models")
    assert time.perf_counter() - start < 0.5


def test_concurrent_creation_leaves_one_complete_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    barrier = threading.Barrier(6)
    paths: list[Path] = []
    errors: list[BaseException] = []

    def create() -> None:
        barrier.wait()
        try:
            paths.append(ensure_tiny(models))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(paths)) == 1
    assert [p.name for p in (models / "tiny").iterdir()] == ["latest"]  # no temp folders left
    assert files_of(paths[0]) == files_of(ensure_tiny(tmp_path / "reference"))


def test_weights_have_llama_names_shapes_and_init(store: ModelStore) -> None:
    path = store.resolve("tiny").path
    config = json.loads((path / "config.json").read_text())
    tensors = load_file(str(path / "model.safetensors"))
    assert set(tensors) == HF_NAMES
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["vocab_size"] == 1000
    assert tensors["model.embed_tokens.weight"].shape == (1000, 64)
    assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)
    assert tensors["model.layers.1.mlp.down_proj.weight"].shape == (64, 192)
    assert torch.equal(tensors["model.norm.weight"], torch.ones(64))
    assert all(t.dtype == torch.float32 for t in tensors.values())
    std = tensors["lm_head.weight"].std().item()
    assert 0.018 < std < 0.022


def test_tiny_tokenizer_and_chat_template(store: ModelStore) -> None:
    path = store.resolve("tiny").path
    tk = Tokenizer.from_dir(path)
    config = json.loads((path / "config.json").read_text())
    assert tk.vocab_size == config["vocab_size"] == 1000
    eot, end = tk.token_to_id("<|eot_id|>"), tk.token_to_id("<|end_of_text|>")
    assert tk.eos_token_ids == [eot, end]
    assert tk.bos_token == "<|begin_of_text|>"
    assert tk.encode("Hello")[0] == tk.bos_token_id == config["bos_token_id"]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    text = tk.apply_chat_template(messages)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = tk.encode(text, add_special_tokens=False)
    assert ids.count(tk.bos_token_id) == 1
    detok = IncrementalDetokenizer(tk, skip_special_tokens=False)
    assert "".join(detok.add([i]) for i in ids) + detok.flush() == text


def test_tiny_renders_like_transformers(store: ModelStore) -> None:
    transformers = pytest.importorskip("transformers")
    path = store.resolve("tiny").path
    theirs = transformers.AutoTokenizer.from_pretrained(str(path))
    ours = Tokenizer.from_dir(path)
    tool = {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}
    conversations: list[list[dict[str, Any]]] = [
        [{"role": "user", "content": "hi"}],
        [
            {"role": "user", "content": "time?"},
            {
                "role": "assistant",
                "tool_calls": [{"function": {"name": "now", "arguments": '{"tz": "UTC"}'}}],
            },
            {"role": "tool", "content": "12:00"},
            {"role": "user", "content": [{"type": "text", "text": "thanks"}]},
        ],
    ]
    for messages in conversations:
        for tools in (None, [tool]):
            expected = theirs.apply_chat_template(
                messages, tools=tools, tokenize=False, add_generation_prompt=True
            )
            assert ours.apply_chat_template(messages, tools=tools) == expected
    text = "Questions people ask: 東京 😀"
    assert ours.encode(text) == theirs(text)["input_ids"]


def test_tiny_loads_in_transformers_without_missing_keys(store: ModelStore) -> None:
    transformers = pytest.importorskip("transformers")
    path = store.resolve("tiny").path
    model, info = transformers.LlamaForCausalLM.from_pretrained(str(path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_key_value_heads) == (64, 2, 2)
    assert cfg.tie_word_embeddings is False
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 1000)
    assert torch.isfinite(logits).all()
