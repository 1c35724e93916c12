"""The loader's kept reader threads (ember/loader/workers.py)."""

from __future__ import annotations

import logging
import threading

import pytest

from ember.loader.workers import Workers


def test_every_task_runs_at_once_on_a_thread_of_its_own() -> None:
    """A load's readers wait on each other (the ring, bind): its tasks must never queue behind
    one another, so N tasks that wait for all N to arrive finish."""
    pool = Workers("test-workers")
    barrier = threading.Barrier(6, timeout=5)
    names: set[str] = set()

    def task() -> None:
        names.add(threading.current_thread().name)
        barrier.wait()

    pool.run([task] * 6)()
    assert names == {"test-workers"} and pool.started == 6 and pool.busy() == 0


def test_threads_started_ahead_are_used_and_kept() -> None:
    pool = Workers("test-workers")
    pool.ensure(4)
    assert pool.started == 4
    seen: set[int] = set()
    pool.run([lambda: seen.add(threading.get_ident())] * 4)()
    pool.run([lambda: seen.add(threading.get_ident())] * 4)()
    assert pool.started == 4 and len(seen) <= 4
    pool.ensure(4)
    assert pool.started == 4  # all idle again: none started


def test_two_loads_at_once_get_threads_of_their_own() -> None:
    pool = Workers("test-workers")
    release = threading.Event()
    first = pool.run([lambda: release.wait(5)] * 3)
    barrier = threading.Barrier(3, timeout=5)
    pool.run([barrier.wait] * 3)()  # would hang if it waited for the first load's threads
    assert pool.busy() == 3
    release.set()
    first()
    assert pool.busy() == 0 and pool.started == 6


def test_a_failing_task_is_logged_and_waiting_still_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = Workers("test-workers")

    def broken() -> None:
        raise RuntimeError("reader blew up")

    with caplog.at_level(logging.ERROR, logger="ember.loader.workers"):
        pool.run([broken, lambda: None])()
    assert "reader blew up" in caplog.text and pool.busy() == 0
    pool.run([lambda: None] * 2)()
    assert pool.started == 2  # the thread that ran the failing task serves again
