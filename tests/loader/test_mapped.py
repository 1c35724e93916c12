"""Zero-copy windows of cached files (mapped.py), with CUDA's registration replaced (no GPU in
CI): the bytes, the ranges registered, their undoing, and when a load uses them at all."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import torch

from ember.loader import mapped
from ember.loader.mapped import PAGE, MappedFiles


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[int, ...]]]:
    log: dict[str, list[tuple[int, ...]]] = {"register": [], "unregister": []}
    monkeypatch.setattr(mapped, "register", lambda p, n: log["register"].append((p, n)))
    monkeypatch.setattr(mapped, "unregister", lambda p: log["unregister"].append((p,)))
    return log


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "a.bin").write_bytes(os.urandom(5 * PAGE + 123))
    (tmp_path / "b.bin").write_bytes(os.urandom(2 * PAGE))
    return tmp_path


def test_windows_hold_the_files_bytes_and_register_whole_pages(
    model_dir: Path, calls: dict[str, list[tuple[int, ...]]]
) -> None:
    data = (model_dir / "a.bin").read_bytes()
    files = MappedFiles(model_dir)
    first = files.window("a.bin", 0, 2 * PAGE)
    last = files.window("a.bin", 4 * PAGE, 4 * PAGE)  # asks past the end: gets what is there
    assert bytes(first.numpy()) == data[: 2 * PAGE]
    assert bytes(last.numpy()) == data[4 * PAGE :] and last.numel() == PAGE + 123
    sizes = [n for _, n in calls["register"]]
    assert sizes == [2 * PAGE, 2 * PAGE]  # the tail's partial page is registered whole
    base = calls["register"][0][0]
    assert calls["register"][1][0] == base + 4 * PAGE
    del first, last
    files.close()
    assert sorted(calls["unregister"]) == sorted((p,) for p, _ in calls["register"])


def test_close_unregisters_even_while_a_view_is_alive_and_unmaps_later(
    model_dir: Path, calls: dict[str, list[tuple[int, ...]]]
) -> None:
    files = MappedFiles(model_dir)
    view = files.window("b.bin", PAGE, PAGE)
    want = (model_dir / "b.bin").read_bytes()[PAGE:]
    files.close()  # the copies have finished by the time the loader closes
    assert len(calls["unregister"]) == 1
    assert bytes(view.numpy()) == want  # still mapped: the view holds the mapping
    del view
    gc.collect()


def test_a_window_must_start_on_a_page(
    model_dir: Path, calls: dict[str, list[tuple[int, ...]]]
) -> None:
    files = MappedFiles(model_dir)
    with pytest.raises(ValueError, match="bad window"):
        files.window("a.bin", 100, PAGE)
    with pytest.raises(ValueError, match="bad window"):
        files.window("b.bin", 2 * PAGE, PAGE)  # starts at the end
    files.close()
    assert not calls["register"]


def test_a_load_uses_windows_only_when_asked_on_cuda_with_cached_files(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = ["a.bin", "b.bin"]
    cuda = torch.device("cuda")
    monkeypatch.delenv("EMBER_ZERO_COPY", raising=False)
    assert MappedFiles.for_load(model_dir, names, cuda) is None  # off by default
    monkeypatch.setenv("EMBER_ZERO_COPY", "1")
    assert MappedFiles.for_load(model_dir, names, torch.device("cpu")) is None
    assert MappedFiles.for_load(None, names, cuda) is None  # not a local directory
    assert MappedFiles.for_load(model_dir, [*names, "missing.bin"], cuda) is None
    monkeypatch.setattr(mapped, "resident_fraction", lambda fd, size: 0.2)
    assert MappedFiles.for_load(model_dir, names, cuda) is None  # cold: the ring reads it
    monkeypatch.setattr(mapped, "resident_fraction", lambda fd, size: 1.0)
    assert isinstance(MappedFiles.for_load(model_dir, names, cuda), MappedFiles)
