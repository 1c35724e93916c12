"""The engine process freezes the heap its imports left before it loads a model, so the
collector's first full collection does not stall the weights' load (benchmarks/bench_gc.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ember.engine.core_client import freeze_import_heap


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_the_imports_heap_leaves_the_collectors_reach(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBER_GC_FREEZE", raising=False)
    tracked = len(gc.get_objects())
    freeze_import_heap()
    assert gc.get_freeze_count() >= tracked // 2  # torch and the engine are imported here
    assert len(gc.get_objects()) < tracked // 2


def test_ember_gc_freeze_0_leaves_it_to_the_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_GC_FREEZE", "0")
    freeze_import_heap()
    assert gc.get_freeze_count() == 0
