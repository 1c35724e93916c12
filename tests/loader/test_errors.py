"""Every broken checkpoint is a ModelLoadError that names the file and the tensor, raised before
anything is allocated where the header already tells, and no half-loaded model comes back."""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ember.errors import ModelLoadError
from ember.loader import SafetensorsStreamer, StreamOptions, workers
from ember.loader.local import LocalSource
from ember.models import load_model

from .helpers import tiny_llama

CPU = torch.device("cpu")


def _write_raw(path: Path, header: dict[str, object], data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _streamer(root: Path) -> SafetensorsStreamer:
    return SafetensorsStreamer(LocalSource(root), CPU, options=StreamOptions(chunk_bytes=8192))


def _entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_truncated_file_names_file_and_tensor(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(100), "b": torch.ones(100)}, str(path))
    os.truncate(path, path.stat().st_size - 10)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors.*tensor 'b'.*truncated"):
        _streamer(tmp_path)


def test_file_shrinking_during_the_load_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(10000)}, str(path))
    streamer = _streamer(tmp_path)  # headers checked against the full size
    os.truncate(path, path.stat().st_size - 5000)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors.*truncated"):
        list(streamer.stream())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"abc", r"too short for a safetensors file"),
        (b"not a safetensors file", r"header claims \d+ bytes"),
        (struct.pack("<Q", 5) + b"{oops", r"header is not valid JSON"),
        (struct.pack("<Q", 2) + b"[]", r"header is not an object"),
        (
            struct.pack("<Q", 107)
            + b'{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
            + b'"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}  ab',
            r"model\.safetensors': its header lists 'w' twice",
        ),
    ],
    ids=["too-short", "garbage", "bad-json", "not-object", "duplicate"],
)
def test_bad_header(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(ModelLoadError, match=r"cannot read weights from '.*model\.safetensors'"):
        _streamer(tmp_path)
    with pytest.raises(ModelLoadError, match=message):
        _streamer(tmp_path)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"w": _entry("X9", [2], 0, 8)}, r"tensor 'w' has dtype 'X9'"),
        ({"w": _entry("F32", [3], 0, 8)}, r"tensor 'w' has shape \[3\] of F32 \(12 bytes\)"),
        ({"w": _entry("F32", [-1], 0, 8)}, r"tensor 'w' has an invalid shape"),
        ({"w": {"dtype": "F32", "shape": [2]}}, r"tensor 'w' has invalid data_offsets"),
        ({"w": _entry("F32", [4], 0, 16)}, r"tensor 'w' needs bytes up to \d+ .*truncated"),
        (
            {"v": _entry("F32", [2], 0, 8), "w": _entry("F32", [1], 4, 8)},
            r"tensors 'v' and 'w' overlap",
        ),
    ],
    ids=["dtype", "size-mismatch", "negative-dim", "no-offsets", "past-end", "overlap"],
)
def test_inconsistent_header(tmp_path: Path, header: dict[str, object], message: str) -> None:
    _write_raw(tmp_path / "model.safetensors", header, bytes(8))
    with pytest.raises(ModelLoadError, match=message):
        _streamer(tmp_path)


def test_tensor_in_two_shards(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(2)}, str(tmp_path / "a.safetensors"))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(
        ModelLoadError, match=r"'w' appears in both .*a\.safetensors.*b\.safetensors"
    ):
        _streamer(tmp_path)


def test_index_names_a_tensor_its_shard_lacks(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(2)}, str(tmp_path / "a.safetensors"))
    index = {"weight_map": {"w": "a.safetensors", "v": "a.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        ModelLoadError, match=r"tensor 'v' is listed in .*index\.json.*a\.safetensors"
    ):
        _streamer(tmp_path)


@pytest.mark.parametrize(
    "shard", ["/tmp/elsewhere/a.safetensors", "../a.safetensors", "sub/../../a.safetensors", "a\\b"]
)
def test_an_index_naming_a_shard_outside_the_folder_is_refused(tmp_path: Path, shard: str) -> None:
    """Shard names become paths under a pull's staging folder and the write-through cache: one
    that leaves the folder is refused, naming the index, before anything is read or written."""
    save_file({"w": torch.zeros(2)}, str(tmp_path / "a.safetensors"))
    index = {"weight_map": {"w": "a.safetensors", "v": shard}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"index\.json' names .* as a shard; a shard must be"):
        _streamer(tmp_path)


@pytest.mark.parametrize("index", [[1, 2], {"metadata": {}}, "weights"])
def test_an_index_without_a_weight_map_says_so(tmp_path: Path, index: object) -> None:
    save_file({"w": torch.zeros(2)}, str(tmp_path / "a.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r'not a JSON object with a "weight_map"'):
        _streamer(tmp_path)


def test_a_folder_that_links_back_to_itself_is_listed_once(tmp_path: Path) -> None:
    """Two links to the folder itself would make a walk that follows links endless."""
    save_file({"w": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("x")
    os.symlink(".", tmp_path / "a")
    os.symlink("..", tmp_path / "sub" / "up")
    os.symlink("sub", tmp_path / "also")  # another way into a folder: listed there too
    source = LocalSource(tmp_path)
    assert source.list_files() == ["also/notes.txt", "model.safetensors", "sub/notes.txt"]
    assert torch.equal(dict(_streamer(tmp_path).stream())["w"], torch.ones(2))
    source.close()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    tiny_llama(tmp_path)
    return tmp_path


def _edit(model_dir: Path, name: str, tensor: torch.Tensor | None) -> None:
    path = model_dir / "model.safetensors"
    tensors = load_file(str(path))
    if tensor is None:
        del tensors[name]
    else:
        tensors[name] = tensor
    save_file(tensors, str(path))


def test_dtype_mismatch_is_named(model_dir: Path) -> None:
    _edit(model_dir, "model.norm.weight", torch.zeros(64, dtype=torch.int64))
    with pytest.raises(
        ModelLoadError,
        match=r"'model\.norm\.weight' in '.*model\.safetensors' is stored as torch\.int64",
    ):
        load_model(model_dir, torch.float32, CPU)


@pytest.mark.parametrize(
    ("name", "tensor", "message"),
    [
        (
            "model.layers.1.mlp.up_proj.weight",
            None,
            r"missing tensor 'model\.layers\.1\.mlp\.up_proj",
        ),
        ("model.layers.0.self_attn.k_proj.weight", torch.zeros(31, 64), r"has shape \[31, 64\]"),
        (
            "model.layers.0.extra.weight",
            torch.zeros(3),
            r"'model\.layers\.0\.extra\.weight' has no place",
        ),
    ],
    ids=["missing", "shape", "unexpected"],
)
def test_checkpoint_that_does_not_fit_the_model(
    model_dir: Path, name: str, tensor: torch.Tensor | None, message: str
) -> None:
    _edit(model_dir, name, tensor)
    with pytest.raises(ModelLoadError, match=message):
        load_model(model_dir, torch.bfloat16, CPU, options=StreamOptions(chunk_bytes=8192))
    assert not _readers()  # the readers stopped with the failed load


def test_unknown_scheme(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"unknown scheme 'ftp://'"):
        load_model("ftp://example/model", torch.float32, CPU)


def _readers() -> list[str]:
    """Loader threads still at work: a load's own pools, and the kept readers' busy ones."""
    names = [t.name for t in threading.enumerate() if t.name.startswith("ember-load")]
    return names + ["ember-reader"] * workers.readers.busy()


def test_a_file_given_as_the_model_folder_and_a_shard_that_is_a_folder_say_so(
    tmp_path: Path,
) -> None:
    save_file({"w": torch.zeros(2)}, str(tmp_path / "a.safetensors"))
    with pytest.raises(ModelLoadError, match=r"a\.safetensors' is a file, not a model directory"):
        LocalSource(tmp_path / "a.safetensors")
    (tmp_path / "b.safetensors").mkdir()
    index = {"weight_map": {"w": "a.safetensors", "v": "b.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"b\.safetensors listed in .* are folders"):
        _streamer(tmp_path)
