"""A local model's weights are read ahead into the page cache while the engine imports torch:
in the loader's order, within the memory budget, once per directory, and not at all when off."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ember.loader import prefetch
from ember.loader.pagecache import evict, resident_fraction


def _write(path: Path, size: int) -> None:
    path.write_bytes(os.urandom(size))


def _resident(path: Path) -> float | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return resident_fraction(fd, path.stat().st_size)
    finally:
        os.close(fd)


def test_a_cold_shard_ends_up_in_the_page_cache(tmp_path: Path) -> None:
    shard = tmp_path / "model.safetensors"
    _write(shard, 16 << 20)
    evict(str(shard))
    cold = _resident(shard)
    if cold is None or cold > 0.5:
        pytest.skip("this filesystem keeps the file cached (tmpfs?)")
    assert prefetch.prefetch_weights(tmp_path)
    assert prefetch.wait(tmp_path, timeout=30)
    deadline = time.monotonic() + 30
    while (_resident(shard) or 0.0) < 0.95 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (_resident(shard) or 0.0) >= 0.95


def test_shards_go_in_the_loaders_order_within_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = {"model-00001-of-00003.safetensors": 3000, "model-00002-of-00003.safetensors": 2000}
    sizes["model-00003-of-00003.safetensors"] = 1000
    for name, size in sizes.items():
        _write(tmp_path / name, size)
    _write(tmp_path / "consolidated.safetensors", 5000)  # not in the index: the loader skips it
    index = {"weight_map": {f"t{i}": name for i, name in enumerate(reversed(list(sizes)))}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    read: dict[str, int] = {}
    preadv = os.preadv

    def spy(fd: int, buffers: list[memoryview], offset: int) -> int:
        n = preadv(fd, buffers, offset)
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        assert offset == read.get(name, 0)  # each file front to back
        read[name] = offset + n
        return n

    monkeypatch.setattr(prefetch.os, "preadv", spy)
    monkeypatch.setattr(prefetch, "resident_fraction", lambda fd, size: 0.0)  # all cold
    monkeypatch.setattr(prefetch, "budget_bytes", lambda: 4000)
    assert prefetch.prefetch_weights(tmp_path)
    assert prefetch.wait(tmp_path, timeout=30)
    read.pop("model.safetensors.index.json")  # read by the file listing, not ahead
    assert list(read.items()) == [
        ("model-00001-of-00003.safetensors", 3000),
        ("model-00002-of-00003.safetensors", 1000),
    ]
    assert prefetch.prefetch_weights(tmp_path)  # once per directory
    assert len(read) == 2
    index = str(tmp_path / "model.safetensors.index.json")
    assert not any(  # no file left open
        os.readlink(f"/proc/self/fd/{fd}") == index
        for fd in map(int, os.listdir("/proc/self/fd"))
        if os.path.exists(f"/proc/self/fd/{fd}")
    )


def test_cached_shards_are_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "model.safetensors", 1 << 20)  # just written: in the page cache
    if (_resident(tmp_path / "model.safetensors") or 0.0) < prefetch.CACHED:
        pytest.skip("the page cache does not keep what was just written here")
    reads: list[int] = []
    preadv = os.preadv
    monkeypatch.setattr(prefetch.os, "preadv", lambda *a: reads.append(1) or preadv(*a))
    assert prefetch.prefetch_weights(tmp_path)
    assert prefetch.wait(tmp_path, timeout=30)
    assert reads == []


def test_nothing_to_read_ahead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not prefetch.prefetch_weights(tmp_path)  # no weights
    assert not prefetch.prefetch_weights(tmp_path / "missing")
    assert not prefetch.prefetch_weights("tiny")  # a store name: resolved later, then read ahead
    _write(tmp_path / "model.safetensors", 100)
    monkeypatch.setenv("EMBER_PREFETCH_WEIGHTS", "0")
    assert not prefetch.prefetch_weights(tmp_path)
    assert not prefetch.wait(tmp_path, timeout=0)


def test_budget_is_half_of_what_is_available() -> None:
    budget = prefetch.budget_bytes()
    assert budget > 0
    assert budget <= prefetch._meminfo_available() // 2
