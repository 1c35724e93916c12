from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from datetime import timezone
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ember.errors import InvalidRequestError, ModelLoadError, ModelNotFoundError
from ember.registry import ModelStore, default_home
from ember.registry.details import human_number
from tests.registry.conftest import write_fake_model

MakeModel = Callable[..., Path]


def test_default_home_honours_ember_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EMBER_HOME", str(tmp_path))
    assert default_home() == tmp_path
    monkeypatch.delenv("EMBER_HOME")
    assert default_home() == Path("~/.ember").expanduser()


def test_unknown_model_says_what_to_run(store: ModelStore) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        store.resolve("nope")
    assert info.value.message == "model 'nope' not found; run 'ember pull nope' or 'ember list'"
    assert info.value.status_code == 404


def test_invalid_name_is_a_bad_request(store: ModelStore) -> None:
    with pytest.raises(InvalidRequestError, match="invalid model name"):
        store.resolve("bad name!")


@pytest.mark.parametrize("name", ["a" * 5000, "ab:" + "c" * 5000, "x/" + "y" * 300])
def test_a_name_too_long_for_a_path_is_a_bad_request(store: ModelStore, name: str) -> None:
    # Such a name is also tried as a folder; the OS refusing the path (ENAMETOOLONG) had been
    # a 500 on every route that names a model.
    with pytest.raises(InvalidRequestError, match="invalid model name"):
        store.resolve(name)
    with pytest.raises(ModelNotFoundError, match="not found"):
        store.resolve("./" + "d" * 5000)


def test_resolve_a_stored_model(store: ModelStore, make_model: MakeModel) -> None:
    path = make_model("qwen2.5:0.5b")
    model = store.resolve("Qwen2.5:0.5B")
    assert model.name == "qwen2.5:0.5b"
    assert model.path == path
    assert model.size == sum(f.stat().st_size for f in path.iterdir())
    assert model.modified_at.tzinfo == timezone.utc
    assert len(model.digest) == 64
    details = model.details
    assert (details.family, details.families, details.format) == (
        "qwen2",
        ("qwen2",),
        "safetensors",
    )
    assert details.parameter_size == "1.50M"
    assert details.quantization_level == "BF16"
    with pytest.raises(ModelNotFoundError):
        store.resolve("qwen2.5")  # other tag


def test_digest_is_stable_and_follows_changes(store: ModelStore, make_model: MakeModel) -> None:
    path = make_model("m")
    first = store.resolve("m").digest
    assert store.resolve("m:latest").digest == first
    (path / "params.json").write_text('{"temperature": 0.2}', encoding="utf-8")
    assert store.resolve("m").digest != first


def test_quantized_model_details(store: ModelStore, make_model: MakeModel) -> None:
    make_model("q", {"quantization_config": {"quant_method": "awq", "bits": 4}})
    assert store.resolve("q").details.quantization_level == "AWQ-INT4"


def test_list_shows_every_stored_model_newest_first(
    store: ModelStore, make_model: MakeModel
) -> None:
    assert store.list() == []
    older = make_model("alpha:v1")
    make_model("org/beta:2b")
    make_model("alpha:v2")
    os.utime(older / "config.json", (1_000_000_000, 1_000_000_000))
    for file in older.iterdir():
        os.utime(file, (1_000_000_000, 1_000_000_000))
    (store.models_dir / "alpha" / ".v3.tmp-123").mkdir()  # a pull in progress
    (store.models_dir / "Not Valid" / "x").mkdir(parents=True)
    names = [m.name for m in store.list()]
    assert sorted(names[:2]) == ["alpha:v2", "org/beta:2b"]
    assert names[2] == "alpha:v1"
    assert len(names) == 3
    assert not (store.models_dir / "tiny").exists()  # listing never creates tiny


def test_a_directory_path_resolves_as_is(
    store: ModelStore, fake_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = store.resolve(str(fake_model_dir))
    assert model.path == fake_model_dir
    assert model.name == "Qwen2.5-Fake:latest"
    assert model.details.family == "qwen2"
    monkeypatch.chdir(fake_model_dir.parent)
    assert store.resolve("./Qwen2.5-Fake").path == fake_model_dir
    assert store.resolve("Qwen2.5-Fake").path == fake_model_dir  # not in the store: the folder
    with pytest.raises(ModelNotFoundError, match=r"model directory '\./missing' not found"):
        store.resolve("./missing")


def test_store_name_wins_over_a_folder_of_the_same_name(
    store: ModelStore, make_model: MakeModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = make_model("dup")
    write_fake_model(tmp_path / "dup")
    monkeypatch.chdir(tmp_path)
    assert store.resolve("dup").path == stored
    assert store.resolve("./dup").path == (tmp_path / "dup").resolve()


def test_details_count_only_the_models_own_weights(
    store: ModelStore, make_model: MakeModel
) -> None:
    path = make_model("warm")
    for sub in ("warm_kv", "onnx", "original"):  # a warm KV cache, other exports of the model
        (path / sub).mkdir()
        shutil.copyfile(path / "model.safetensors", path / sub / "model.safetensors")
    save_file({"kv": torch.zeros(7, dtype=torch.float32)}, str(path / "warm_kv" / "kv.safetensors"))
    details = store.resolve("warm").details
    assert (details.parameter_size, details.quantization_level) == ("1.50M", "BF16")
    # A sharded checkpoint: the shards its index names, and nothing else.
    (path / "model.safetensors").rename(path / "model-00001-of-00001.safetensors")
    index = {"weight_map": {"lm_head.weight": "model-00001-of-00001.safetensors"}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    save_file({"x": torch.zeros(9)}, str(path / "stray.safetensors"))
    assert store.resolve("warm").details.parameter_size == "1.50M"


def test_a_folder_that_is_not_a_model_fails_before_it_is_walked(
    store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "not-a-model"
    (folder / "deep").mkdir(parents=True)
    (folder / "deep" / "junk.safetensors").write_bytes(b"not safetensors")
    walked: list[Path] = []
    monkeypatch.setattr(Path, "rglob", lambda self, pattern: walked.append(self) or iter(()))
    with pytest.raises(ModelNotFoundError, match=r"is not a model folder: it has no config\.json"):
        store.resolve(str(folder))
    with pytest.raises(ModelNotFoundError, match=r"is not a model folder"):
        store.resolve(str(tmp_path / "not-a-model" / "deep"))
    assert walked == []


def test_incomplete_model_says_to_pull_again(store: ModelStore) -> None:
    store.path_for("half:done").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match=r"incomplete.*ember pull half:done"):
        store.resolve("half:done")


def test_params_and_system(store: ModelStore, make_model: MakeModel) -> None:
    path = make_model("p")
    model = store.resolve("p")
    assert store.params(model) == {}
    assert store.system(model) is None
    (path / "params.json").write_text(json.dumps({"num_predict": 64, "stop": ["###"]}))
    (path / "system").write_text("You are terse.", encoding="utf-8")
    assert store.params(model) == {"num_predict": 64, "stop": ["###"]}
    assert store.system(model) == "You are terse."
    (path / "params.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match=r"params\.json"):
        store.params(model)


def test_copy_and_remove(store: ModelStore, make_model: MakeModel) -> None:
    make_model("src:v1")
    copied = store.copy("src:v1", "team/dst")
    assert copied.name == "team/dst:latest"
    assert (copied.path / "model.safetensors").read_bytes() == (
        store.path_for("src:v1") / "model.safetensors"
    ).read_bytes()
    (copied.path / "params.json").write_text("{}")
    assert not (store.path_for("src:v1") / "params.json").exists()
    assert {m.name for m in store.list()} == {"src:v1", "team/dst:latest"}
    store.remove("team/dst")
    assert not (store.models_dir / "team").exists()
    assert [m.name for m in store.list()] == ["src:v1"]
    with pytest.raises(ModelNotFoundError):
        store.remove("team/dst")


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (999, "999"),
        (227_000, "227K"),
        (494_032_768, "494.03M"),
        (8_000_000_000, "8B"),
        (7_615_616_512, "7.6B"),
        (1_500_000, "1.50M"),
    ],
)
def test_parameter_sizes_print_like_ollama(count: int, text: str) -> None:
    assert human_number(count) == text
