"""Serving a model out of an Ollama store laid out in a temp dir (manifest, GGUF blob, template,
params, system prompt): ModelStore.resolve finds it by Ollama's name, and the LLM API greedy
tokens equal transformers' on the same (quantized) weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from ember import LLM, SamplingParams
from ember.registry import ModelStore, default_home
from ember.registry.names import parse_name
from ember.registry.ollama_store import find_ollama_model, list_ollama_models
from tests.engine.hf_models import hf_greedy
from tests.loader.gguf_writer import Q, tiny_vocab, write_gguf
from tests.models.helpers import randomize_

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
GO_TEMPLATE = "{{ .System }} {{ .Prompt }}"


def _blob(blobs: Path, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (blobs / digest.replace(":", "-")).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _ollama_store(root: Path, hf: Any, vocab: dict[str, Any]) -> None:
    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    write_gguf(hf, root / "model.gguf", vocab, {"proj": Q.Q8_0}, TEMPLATE)
    media = "application/vnd.ollama.image."
    layers = [
        {"mediaType": media + "model", **_blob(blobs, (root / "model.gguf").read_bytes())},
        {"mediaType": media + "template", **_blob(blobs, GO_TEMPLATE.encode())},
        {"mediaType": media + "system", **_blob(blobs, b"You are terse.")},
        {"mediaType": media + "params", **_blob(blobs, b'{"stop": ["<|eot_id|>"], "num_ctx": 64}')},
    ]
    manifest = root / "manifests/registry.ollama.ai/library/tinyllama/q8"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))


@pytest.fixture()
def ollama(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Path]:
    tiny = ModelStore(default_home()).resolve("tiny").path
    cfg = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
        max_position_embeddings=256,
        bos_token_id=995,
        eos_token_id=999,
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).float().eval()
    randomize_(hf, seed=3)
    root = tmp_path / "ollama"
    _ollama_store(root, hf, tiny_vocab(tiny / "tokenizer.json"))
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    return hf, root


def test_ollama_model_is_found_listed_and_served(ollama: tuple[Any, Path], tmp_path: Path) -> None:
    hf, root = ollama
    found = find_ollama_model(parse_name("tinyllama:q8"))
    assert found is not None and found.params["num_ctx"] == 64
    assert [m.name for m in list_ollama_models(root)] == ["tinyllama:q8"]
    assert find_ollama_model(parse_name("other:latest")) is None

    store = ModelStore(tmp_path / "ember-home")
    model = store.resolve("tinyllama:q8")
    assert model.name == "tinyllama:q8"
    assert (model.path / "system").read_text() == "You are terse."
    assert (model.path / "ollama_template").read_text() == GO_TEMPLATE
    assert store.params(model)["stop"] == ["<|eot_id|>"]
    assert json.loads((model.path / "tokenizer_config.json").read_text())["chat_template"] == (
        TEMPLATE
    )
    assert store.resolve("tinyllama:q8").path == model.path  # converted once, then reused

    llm = LLM(str(model.path), dtype="float32", device="cpu", block_size=4)
    prompt = [5, 17, 42, 99, 7, 3, 250, 11, 300, 12]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    out = llm.generate({"prompt_token_ids": prompt}, params)[0]
    # The folder holds bf16 weights (Ollama models are served in bf16 on GPUs): compare with
    # transformers on the same rounding.
    hf.to(torch.bfloat16).float()
    assert out.outputs[0].token_ids == hf_greedy(hf, prompt, 12)


def test_ember_list_marks_ollama_models(ollama: tuple[Any, Path], tmp_path: Path) -> None:
    import io

    from ember.registry.commands import list_command

    _, root = ollama
    out = io.StringIO()
    assert list_command(ModelStore(tmp_path / "ember-home"), out, ollama_root=root) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:4] == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert any(line.startswith("tinyllama:q8 (ollama)") for line in lines[1:])


def _fake_ollama_store(root: Path, models: dict[str, bytes]) -> None:
    """Manifests with a (fake) GGUF layer and the given params layer, by model name."""
    (root / "blobs").mkdir(parents=True)
    media = "application/vnd.ollama.image."
    for model, params in models.items():
        layers = [
            {"mediaType": media + "model", **_blob(root / "blobs", b"GGUF" + model.encode())},
            {"mediaType": media + "params", **_blob(root / "blobs", params)},
        ]
        manifest = root / "manifests/registry.ollama.ai/library" / model / "latest"
        manifest.parent.mkdir(parents=True)
        manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))


def test_rm_of_an_ollama_model_says_ollamas_store_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ember.errors import ModelNotFoundError

    root = tmp_path / "ollama"
    _fake_ollama_store(root, {"fake": b"{}"})
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    with pytest.raises(ModelNotFoundError, match=r"Ollama's store, which is read-only.*ollama rm"):
        ModelStore(tmp_path / "ember-home").remove("fake")
    assert (root / "manifests/registry.ollama.ai/library/fake/latest").is_file()


def test_a_damaged_ollama_model_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import io

    from ember.registry.commands import list_command

    root = tmp_path / "ollama"
    _fake_ollama_store(root, {"good": b'{"num_ctx": 64}', "broken": b"{not json"})
    store = ModelStore(tmp_path / "ember-home")
    (store.path_for("mine")).mkdir(parents=True)
    (store.path_for("mine") / "config.json").write_text('{"model_type": "llama"}')
    out = io.StringIO()
    assert list_command(store, out, ollama_root=root) == 0
    names = [line.split()[0] for line in out.getvalue().splitlines()[1:]]
    assert names == ["mine:latest", "good:latest"]
    assert "'broken:latest' is damaged" in caplog.text and "params layer" in caplog.text
