"""Ring slots pinned ahead of a load (prepin.py): the pool's bookkeeping, on CPU buffers."""

from __future__ import annotations

import threading

import pytest
import torch

from ember.loader import prepin
from ember.loader.prepin import ALIGNMENT, SlotPool, page_aligned

MiB = 1 << 20


def _cpu(n: int) -> torch.Tensor:
    return page_aligned(n, pinned=False)


def test_taken_slots_are_page_aligned_and_of_the_asked_size() -> None:
    pool = SlotPool()
    pool.start(3, MiB, _cpu)
    assert pool.thread is not None
    pool.thread.join(timeout=10)
    taken = [pool.take(MiB) for _ in range(4)]
    assert taken[3] is None  # three were pinned, the fourth comes from the ring itself
    for buf in taken[:3]:
        assert buf is not None and buf.numel() == MiB and buf.data_ptr() % ALIGNMENT == 0
    assert len({b.data_ptr() for b in taken[:3] if b is not None}) == 3
    assert pool.count == 3


def test_a_slot_of_another_size_is_never_handed_out() -> None:
    pool = SlotPool()
    pool.start(2, MiB, _cpu)
    assert pool.thread is not None
    pool.thread.join(timeout=10)
    assert pool.take(2 * MiB) is None
    assert pool.take(MiB) is not None


def test_take_never_waits_for_the_thread_and_release_stops_it() -> None:
    gate = threading.Event()
    made: list[int] = []

    def slow(n: int) -> torch.Tensor:
        gate.wait(timeout=10)
        made.append(n)
        return _cpu(n)

    pool = SlotPool()
    pool.start(5, MiB, slow)
    assert pool.take(MiB) is None  # nothing ready yet: the ring pins its own
    assert pool.release() == 0
    gate.set()
    assert pool.thread is not None
    pool.thread.join(timeout=10)
    assert len(made) == 1 and pool.take(MiB) is None  # stopped after the one in progress


def test_a_failing_allocation_leaves_the_pool_empty_not_broken() -> None:
    def fail(n: int) -> torch.Tensor:
        raise RuntimeError("no pinned memory")

    pool = SlotPool()
    pool.start(2, MiB, fail)
    assert pool.thread is not None
    pool.thread.join(timeout=10)
    assert pool.take(MiB) is None and pool.count == 0


def test_nothing_is_pinned_for_the_cpu_or_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_PREPIN", "1")
    prepin.start("cpu", 4, MiB)
    if not torch.cuda.is_available():
        prepin.start("cuda", 4, MiB)
    assert prepin._pool.thread is None
    assert prepin.take(MiB) is None
    prepin.release()
