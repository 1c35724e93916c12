"""`ember serve` keeps Triton's compiled kernels under ember's home unless told otherwise."""

from __future__ import annotations

import os
import sys
import threading
import types
from pathlib import Path

import pytest

from ember import kernel_cache
from ember.kernel_cache import use_kernel_cache


def test_defaults_under_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRITON_CACHE_DIR", "")  # unset (and restored after the test)
    path = use_kernel_cache(tmp_path)
    assert path == tmp_path / "kernels" / "triton"
    assert os.environ["TRITON_CACHE_DIR"] == str(path)


def test_an_explicit_cache_dir_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRITON_CACHE_DIR", "/mnt/kernels")
    assert use_kernel_cache(tmp_path) == Path("/mnt/kernels")


@pytest.fixture
def fresh_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel_cache, "_hash_thread", None)


def _fake_triton(monkeypatch: pytest.MonkeyPatch, key: object, where: str) -> None:
    module = types.ModuleType(where)
    module.triton_key = key  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, where, module)


@pytest.mark.parametrize("where", ["triton.runtime.cache", "triton.compiler.compiler"])
def test_triton_s_cache_key_is_hashed_once_on_a_thread(
    monkeypatch: pytest.MonkeyPatch, fresh_hash: None, where: str
) -> None:
    """Where the Triton version keeps `triton_key`, a thread computes it once, and waiting for
    it returns once it has (so the first kernel call finds it cached)."""
    if where != "triton.runtime.cache":
        monkeypatch.setitem(sys.modules, "triton.runtime.cache", types.ModuleType("cache"))
    calls: list[str] = []
    gate = threading.Event()

    def triton_key() -> str:
        gate.wait(5)
        calls.append(threading.current_thread().name)
        return "key"

    _fake_triton(monkeypatch, triton_key, where)
    kernel_cache.hash_triton_ahead()
    kernel_cache.hash_triton_ahead()  # once a process
    assert calls == []  # not on the caller's thread
    gate.set()
    kernel_cache.wait_triton_hash()
    assert calls == ["ember-triton-key"]


def test_no_triton_or_a_failing_hash_is_no_error(
    monkeypatch: pytest.MonkeyPatch, fresh_hash: None
) -> None:
    def broken() -> str:
        raise OSError("libtriton.so: no such file")

    _fake_triton(monkeypatch, broken, "triton.runtime.cache")
    kernel_cache.hash_triton_ahead()
    kernel_cache.wait_triton_hash()
    monkeypatch.setattr(kernel_cache, "_hash_thread", None)
    monkeypatch.setitem(sys.modules, "triton.runtime.cache", None)  # import fails
    monkeypatch.setitem(sys.modules, "triton.compiler.compiler", None)
    kernel_cache.hash_triton_ahead()
    kernel_cache.wait_triton_hash()


def test_waiting_without_a_thread_returns(fresh_hash: None) -> None:
    kernel_cache.wait_triton_hash()
