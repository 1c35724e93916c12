"""Both of `ember serve`'s processes hold collections off while they import and then freeze the
heap their imports left, so no full collection rescans it during the weights' load or later
(benchmarks/bench_gc.py); EMBER_GC_FREEZE=0 leaves the collector alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ember.heap import freeze_import_heap, hold_collections


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.enable()


def test_collections_wait_for_the_imports_then_skip_their_heap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EMBER_GC_FREEZE", raising=False)
    hold_collections()
    assert not gc.isenabled()
    tracked = len(gc.get_objects())
    freeze_import_heap()
    assert gc.isenabled()
    assert gc.get_freeze_count() >= tracked // 2  # torch and the engine are imported here
    assert len(gc.get_objects()) < tracked // 2


def test_ember_gc_freeze_0_leaves_the_collector_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_GC_FREEZE", "0")
    hold_collections()
    assert gc.isenabled()
    freeze_import_heap()
    assert gc.get_freeze_count() == 0
