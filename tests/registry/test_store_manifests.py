"""Manifests and content-addressed blobs: copies and created models share bytes, folders from
before manifests are adopted, removal frees only unshared blobs, and a write cut short is never
listed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ember.errors import InvalidRequestError, ModelNotFoundError
from ember.registry import ModelStore
from ember.registry.create import CreateSpec, create
from ember.registry.modelfile import parse_modelfile

MakeModel = Callable[..., Path]


def _inode(path: Path) -> int:
    return path.stat().st_ino


def test_copy_shares_weight_blobs_and_keeps_the_id(
    store: ModelStore, make_model: MakeModel
) -> None:
    make_model("qwen:0.5b")
    copied = store.copy("qwen:0.5b", "mine:v1")
    original = store.resolve("qwen:0.5b")
    assert copied.digest == original.digest  # as in Ollama: a copy has its original's ID
    weights = original.path / "model.safetensors"
    blob = store.blobs.path(hashlib.sha256(weights.read_bytes()).hexdigest())
    assert _inode(weights) == _inode(copied.path / "model.safetensors") == _inode(blob)
    assert store.manifest("mine:v1") is not None and store.manifest("qwen:0.5b") is not None
    assert copied.details.parent_model == "qwen:0.5b"


def test_small_files_are_copies_so_edits_never_touch_a_blob(
    store: ModelStore, make_model: MakeModel
) -> None:
    make_model("base")
    copied = store.copy("base", "edited")
    (copied.path / "params.json").write_text('{"temperature": 0.1}')
    assert not (store.resolve("base").path / "params.json").exists()
    config = copied.path / "config.json"
    assert _inode(config) != _inode(store.resolve("base").path / "config.json")


def test_remove_frees_only_blobs_no_other_model_holds(
    store: ModelStore, make_model: MakeModel
) -> None:
    make_model("base")
    store.copy("base", "twin")
    blobs_before = set(os.listdir(store.blobs.root))
    store.remove("base")
    assert set(os.listdir(store.blobs.root)) == blobs_before
    assert (store.resolve("twin").path / "model.safetensors").is_file()
    store.remove("twin")
    assert os.listdir(store.blobs.root) == []
    assert store.list() == []
    with pytest.raises(ModelNotFoundError):
        store.remove("twin")


def test_remove_leaves_uploads_for_a_later_create_alone(
    store: ModelStore, make_model: MakeModel
) -> None:
    upload = store.blobs.write(b'{"uploaded": "for a create yet to come"}')
    make_model("base")
    store.copy("base", "twin")
    store.remove("twin")
    assert store.blobs.has(upload)
    store.remove("base")
    assert [p.name for p in store.blobs.root.iterdir()] == [f"sha256-{upload}"]


def test_copy_leaves_the_source_id_and_modified_time_alone(
    store: ModelStore, make_model: MakeModel
) -> None:
    make_model("base")  # a folder with no manifest yet, as tiny and hand-made models are
    before = store.resolve("base")
    copied = store.copy("base", "twin")
    after = store.resolve("base")
    assert (after.digest, after.modified_at) == (before.digest, before.modified_at)
    assert copied.digest == before.digest
    listed = {m.name: m.digest for m in store.list()}
    assert listed == {"base:latest": before.digest, "twin:latest": before.digest}


def test_half_written_models_are_never_listed(store: ModelStore, make_model: MakeModel) -> None:
    make_model("done")
    # A copy or create that crashed leaves a hidden temp folder and no manifest.
    crashed = store.models_dir / "other" / ".latest.tmp-123"
    crashed.mkdir(parents=True)
    (crashed / "config.json").write_text("{}")
    (store.manifests_dir / "other").mkdir(parents=True)
    (store.manifests_dir / "other" / ".latest.abc.tmp").write_text("{")
    assert [m.name for m in store.list()] == ["done:latest"]
    with pytest.raises(ModelNotFoundError):
        store.resolve("other")


def test_a_model_whose_folder_is_gone_is_rebuilt_from_its_blobs(
    store: ModelStore, make_model: MakeModel
) -> None:
    make_model("base")
    store.copy("base", "again")
    digest = store.resolve("again").digest
    import shutil

    shutil.rmtree(store.path_for("again"))
    model = store.resolve("again")
    assert model.digest == digest and (model.path / "model.safetensors").is_file()


def test_create_with_template_system_and_parameters(
    store: ModelStore, make_model: MakeModel
) -> None:
    path = make_model("base")
    (path / "params.json").write_text(json.dumps({"num_predict": 5, "temperature": 0.7}))
    spec = CreateSpec(
        base="base", template="{{ messages }}", system="You are Mario.", parameters={"top_k": 3}
    )
    statuses: list[str] = []
    model = create(store, "mario", spec, statuses.append)
    assert statuses[-1] == "writing manifest"
    assert store.system(model) == "You are Mario."
    assert store.params(model) == {"num_predict": 5, "temperature": 0.7, "top_k": 3}
    assert (model.path / "chat_template.jinja").read_text() == "{{ messages }}"
    assert model.digest != store.resolve("base").digest
    base_weights = store.resolve("base").path / "model.safetensors"
    assert _inode(model.path / "model.safetensors") == _inode(base_weights)


def test_create_from_a_folder_leaves_the_folder_alone(
    store: ModelStore, fake_model_dir: Path
) -> None:
    before = {p.name: p.stat().st_ino for p in fake_model_dir.iterdir()}
    model = create(store, "fromdir", CreateSpec(base=str(fake_model_dir)))
    assert {p.name: p.stat().st_ino for p in fake_model_dir.iterdir()} == before
    assert model.details.family == "qwen2" and [m.name for m in store.list()] == ["fromdir:latest"]


def test_create_from_uploaded_blobs(store: ModelStore, fake_model_dir: Path) -> None:
    files = {}
    for p in fake_model_dir.iterdir():
        files[p.name] = "sha256:" + store.blobs.write(p.read_bytes())
    model = create(store, "uploaded", CreateSpec(files=files))
    assert model.details.parameter_size == "1.50M"
    with pytest.raises(ModelNotFoundError, match="upload it first"):
        create(store, "x", CreateSpec(files={"config.json": "sha256:" + "0" * 64}))
    with pytest.raises(InvalidRequestError, match=r"config\.json"):
        create(store, "x", CreateSpec(files={"tokenizer.json": files["tokenizer.json"]}))


def test_modelfile() -> None:
    spec = parse_modelfile(
        'FROM ./weights\n# a comment\nPARAMETER temperature 0.2\nPARAMETER stop "<|eot|>"\n'
        'PARAMETER stop "END"\nSYSTEM """You are\nMario."""\nTEMPLATE {{ .Prompt }}\n'
    )
    assert spec.base == "./weights" and spec.system == "You are\nMario."
    assert spec.parameters == {"temperature": 0.2, "stop": ["<|eot|>", "END"]}
    assert spec.template == "{{ .Prompt }}"
    with pytest.raises(InvalidRequestError, match="ADAPTER"):
        parse_modelfile("FROM x\nADAPTER ./lora")


def test_blob_upload_checks_its_digest(store: ModelStore) -> None:
    data = b"hello blobs"
    sha = hashlib.sha256(data).hexdigest()

    async def chunks() -> AsyncIterator[bytes]:
        yield data[:5]
        yield data[5:]

    with pytest.raises(InvalidRequestError, match="digest mismatch"):
        asyncio.run(store.blobs.receive(chunks(), "0" * 64))
    assert asyncio.run(store.blobs.receive(chunks(), sha)) == len(data)
    assert store.blobs.path(sha).read_bytes() == data
    assert [p.name for p in store.blobs.root.iterdir()] == [f"sha256-{sha}"]


def test_a_pull_records_its_files_as_blobs_without_rehashing(
    store: ModelStore, fake_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ember.registry import assemble
    from ember.registry.pull import pull

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"{path} hashed again")

    monkeypatch.setattr(assemble, "file_sha256", no_hashing)
    result = pull(str(fake_model_dir), store, "pulled")
    manifest = store.manifest("pulled")
    assert manifest is not None and result.model.digest == manifest.digest
    weights = next(f for f in manifest.files if f.path == "model.safetensors")
    assert (
        weights.sha256
        == hashlib.sha256((fake_model_dir / "model.safetensors").read_bytes()).hexdigest()
    )
    assert store.blobs.has(weights.sha256)


@pytest.mark.parametrize("how", ["copy", "create"])
def test_a_users_folder_is_copied_so_rewriting_its_files_never_changes_a_blob(
    store: ModelStore, fake_model_dir: Path, how: str
) -> None:
    weights = fake_model_dir / "model.safetensors"
    original = weights.read_bytes()
    if how == "copy":
        model = store.copy(str(fake_model_dir), "userq")
    else:
        model = create(store, "userq", CreateSpec(base=str(fake_model_dir)))
    assert weights.stat().st_nlink == 1
    with weights.open("r+b") as f:  # as cp, dd and rsync --inplace write: the same inode
        f.write(b"\xff" * 4096)
    for blob in store.blobs.root.iterdir():
        assert blob.name == f"sha256-{hashlib.sha256(blob.read_bytes()).hexdigest()}"
    assert (store.resolve("userq").path / "model.safetensors").read_bytes() == original
    assert model.path != fake_model_dir
