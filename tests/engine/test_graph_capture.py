"""CUDA-graph bookkeeping that runs without a GPU: the capture ladder, which sizes start-up
captures, which graph a batch replays, what is captured next, and the core loop capturing the
rest while idle without delaying requests."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ember.engine.core_client import IDLE_BEFORE_CAPTURE_S, CoreStep, core_loop
from ember.engine.cuda_graphs import capture_sizes
from ember.engine.graph_capture import GraphFamily, startup_sizes


class _FakeFamily(GraphFamily):
    """A family whose `capture` records sizes instead of touching CUDA."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__("decode", sizes, lambda n: torch.empty(n), torch.device("cpu"), _noop)
        self.order: list[int] = []

    def capture(self, sizes: Any) -> None:
        for size in sorted(set(sizes), reverse=True):
            if size not in self.graphs:
                self._record(size, None, torch.empty(size))  # type: ignore[arg-type]
                self.order.append(size)


def _noop() -> None:
    pass


def test_ladder_ends_at_max_num_seqs() -> None:
    assert capture_sizes(256) == [
        1,
        2,
        4,
        8,
        16,
        24,
        32,
        48,
        64,
        80,
        96,
        112,
        128,
        160,
        192,
        224,
        256,
    ]
    assert capture_sizes(4) == [1, 2, 4]
    assert capture_sizes(100)[-2:] == [96, 100]


def test_startup_captures_the_smallest_sizes_and_the_largest() -> None:
    assert startup_sizes(capture_sizes(256)) == [1, 2, 4, 8, 256]
    assert startup_sizes([1, 2, 4]) == [1, 2, 4]
    assert startup_sizes([]) == []


def test_a_batch_replays_the_smallest_captured_graph_that_holds_it() -> None:
    family = _FakeFamily(capture_sizes(256))
    assert family.bucket(1) is None  # nothing captured: no graph fits
    family.capture(startup_sizes(family.sizes))
    assert [family.bucket(n) for n in (1, 3, 8, 9, 100, 256)] == [1, 4, 8, 256, 256, 256]
    assert family.bucket(257) is None
    assert family.pending == [16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224]


def test_a_padded_batch_wants_its_own_size_next() -> None:
    family = _FakeFamily(capture_sizes(256))
    family.capture(startup_sizes(family.sizes))
    family.want(3)  # its own size (4) is captured: nothing wanted
    assert not family.wanted
    assert family.next_pending() == 224  # idle order: largest first
    family.want(20)
    family.want(100)
    assert family.wanted and family.next_pending() == 24
    family.capture([24])
    assert family.bucket(20) == 24 and family.next_pending() == 112
    family.capture([112])
    assert not family.wanted


def test_give_up_keeps_the_captured_sizes() -> None:
    family = _FakeFamily([1, 2, 4, 8, 16, 32])
    family.capture([1, 32])
    family.want(10)
    family.give_up()
    assert family.pending == [] and not family.wanted and family.next_pending() is None
    assert family.bucket(10) == 32


class _Inbox:
    def __init__(self, batches: list[list[tuple[str, Any]]]) -> None:
        self.batches = batches
        self.waits: list[float | None] = []

    def take(self, wait: float | None) -> list[tuple[str, Any]]:
        self.waits.append(wait)
        if wait is None and not self.batches:
            raise AssertionError("waiting forever with nothing left to arrive")
        return self.batches.pop(0) if self.batches else []


class _Core:
    """Two graphs left from start-up, one request that takes two steps."""

    def __init__(self) -> None:
        self.pending = 2
        self.steps_left = 0
        self.log: list[str] = []

    def has_unfinished(self) -> bool:
        return self.steps_left > 0

    def has_pending_graphs(self) -> bool:
        return self.pending > 0

    def capture_graph(self, idle: bool) -> bool:
        assert idle
        if not self.pending:
            return False
        self.pending -= 1
        self.log.append("capture")
        return True

    def add_request(self, req: Any) -> None:
        self.steps_left = 2

    def step(self) -> list[Any]:
        self.steps_left -= 1
        self.log.append("step")
        return []

    def stats(self) -> None:
        return None

    def abort(self, ids: list[str]) -> None:
        pass


def test_core_loop_captures_after_a_quiet_pause_and_never_delays_a_step() -> None:
    core = _Core()
    # A request (two steps), a pause with no messages (a capture), a message that is only an
    # abort (no capture on that turn), another pause (the last capture), then shutdown.
    inbox = _Inbox([[("add", ["req"])], [], [], [("abort", ["x"])], [], [("shutdown", None)]])
    emitted: list[CoreStep] = []
    core_loop(core, inbox, emitted.append)  # type: ignore[arg-type]
    assert core.log == ["step", "step", "capture", "capture"]
    quiet = IDLE_BEFORE_CAPTURE_S
    # While a request runs the inbox is only polled; while graphs are pending the core waits
    # a quiet pause for messages; with none left it waits as long as it takes.
    assert inbox.waits == [quiet, 0.0, quiet, quiet, quiet, None]


@pytest.mark.parametrize("max_num_seqs", [1, 3, 64, 256, 1000])
def test_every_batch_fits_once_startup_sizes_are_captured(max_num_seqs: int) -> None:
    family = _FakeFamily(capture_sizes(max_num_seqs))
    family.capture(startup_sizes(family.sizes))
    assert all(family.bucket(n) is not None for n in range(1, max_num_seqs + 1))
