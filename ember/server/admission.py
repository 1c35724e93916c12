"""Admission control: a bounded number of requests in flight, or 503.

The engine runs at most num_parallel sequences (its max_num_seqs) and queues the rest. The server
bounds that queue: a request is refused once num_parallel + max_queue requests are already pending.
Requests are counted from admission, so that requests waiting for the model to load, or between
admission and reaching the engine, count too; the engine's own count covers anything else.
"""

from __future__ import annotations

from ember.errors import ServerBusyError
from ember.server.errors import BUSY_MESSAGE


class Slot:
    """One admitted request. release() is idempotent so every exit path may call it."""

    __slots__ = ("_admission", "_released")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission.in_flight -= 1


class Admission:
    def __init__(self, num_parallel: int, max_queue: int) -> None:
        self.limit = num_parallel + max_queue
        self.in_flight = 0

    def acquire(self, engine_unfinished: int = 0) -> Slot:
        """Admit one request or raise ServerBusyError (503).

        engine_unfinished: the engine's count of unfinished requests, which includes ones
        this server submitted (hence max, not sum).
        """
        if max(self.in_flight, engine_unfinished) >= self.limit:
            raise ServerBusyError(BUSY_MESSAGE)
        self.in_flight += 1
        return Slot(self)
