"""The loader's reader threads, kept between loads and startable ahead of one.

Starting 16 threads inside a load took 11-17 ms of the loading thread's time on the GPU machine
(each new thread waits for the GIL the load's other threads hold; docs/benchmarks.md), before a
byte could move. `ensure(n)` starts them once, ahead of the load where the caller can
(prepin.start, beside `ember serve`'s imports); a load then hands them its work. A thread runs
one task at a time; `run` starts more threads where fewer are idle than tasks are given, so a
task never waits behind another load's.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

Task = Callable[[], None]


class Workers:
    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: queue.SimpleQueue[Task] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a task, less the tasks handed out for them
        self.started = 0  # threads started, ever
        self._running = 0  # tasks handed out and not yet returned

    def ensure(self, n: int) -> None:
        """At least `n` threads idle (starting the missing ones)."""
        with self._lock:
            missing = max(0, n - self._idle)
            self._idle += missing
        self._spawn(missing)

    def _spawn(self, n: int) -> None:
        for _ in range(n):
            threading.Thread(target=self._serve, name=self._name, daemon=True).start()
            with self._lock:
                self.started += 1

    def run(self, tasks: list[Task]) -> Callable[[], object]:
        """Start every task on a thread of its own now; returns a function that waits until
        all have returned (a task's exception is its own to report: it is logged here)."""
        left = len(tasks)
        done = threading.Event()
        count_lock = threading.Lock()

        def wrapped(task: Task) -> Task:
            def call() -> None:
                nonlocal left
                try:
                    task()
                except BaseException:
                    log.exception("a loader thread's task failed")
                finally:
                    with self._lock:  # this thread is idle again before anyone hears it is done
                        self._idle += 1
                        self._running -= 1
                    with count_lock:
                        left -= 1
                        if left == 0:
                            done.set()

            return call

        if not tasks:
            done.set()
        with self._lock:  # an idle thread reserved for each task, started if missing
            missing = max(0, len(tasks) - self._idle)
            self._idle += missing - len(tasks)
            self._running += len(tasks)
        self._spawn(missing)
        for task in tasks:
            self._tasks.put(wrapped(task))
        return done.wait

    def busy(self) -> int:
        """Tasks handed out that have not returned."""
        with self._lock:
            return self._running

    def _serve(self) -> None:
        while True:
            self._tasks.get()()  # (a task given by `run` never raises and counts itself idle)


readers = Workers("ember-reader")
