"""A fixed ring of host buffers that reads land in and device copies leave from.

On CUDA each slot is pinned memory, so host-to-device copies are true async DMA; each slot
carries an event recorded after its last copies, and a reader waits on that event before it reuses
the slot. On the CPU the slots are plain memory and copies finish before a slot is handed back.
Readers `take` a free slot (the one given back longest ago, whose copies are the likeliest to be
done) and `give` it back once its copies are enqueued.

Slots are allocated by the reader that first uses them: pinning takes time (pinned.py), and this
way it is spread over the readers and overlaps the first reads instead of delaying them all. On
CUDA a slot pinned ahead (prepin.py) is taken first. `pin_seconds` sums the readers' time spent
pinning (for the loader's log line).
"""

from __future__ import annotations

import threading
import time
from collections import deque

import torch

from ember.loader import prepin
from ember.loader.prepin import ALIGNMENT, page_aligned


class HostRing:
    def __init__(self, slots: int, slot_bytes: int, device: torch.device) -> None:
        if slot_bytes % ALIGNMENT:
            raise ValueError(f"slot size {slot_bytes} is not a multiple of {ALIGNMENT}")
        self.slot_bytes = slot_bytes
        self.device = device
        self.cuda = device.type == "cuda"
        self._tensors: list[torch.Tensor | None] = [None] * slots
        self._views: list[memoryview | None] = [None] * slots
        self._events: list[torch.cuda.Event | None] = [None] * slots
        self._free = deque(range(slots))
        self._lock = threading.Lock()
        self._given = threading.Condition(self._lock)  # a slot came back
        self.pin_seconds = 0.0
        self.pinned_here = 0  # slots this ring pinned itself (not taken from prepin)

    def __len__(self) -> int:
        return len(self._tensors)

    def take(self) -> int:
        """A free slot, for one reader until it gives it back. A ring has at least as many
        slots as readers, so one is always free."""
        with self._lock:
            return self._free.popleft()

    def try_take(self) -> int | None:
        """A free slot, or None where every slot is taken."""
        with self._lock:
            return self._free.popleft() if self._free else None

    def take_waiting(self, stopping: threading.Event) -> int | None:
        """A free slot, waiting until one is given back if none is (the ring's slots can all
        hold chunks read ahead of `bind`); None once `stopping` is set."""
        with self._given:
            while not self._free:
                if stopping.is_set():
                    return None
                self._given.wait(0.01)  # (and looks at `stopping` again)
            return self._free.popleft()

    def give(self, slot: int) -> None:
        with self._given:
            self._free.append(slot)
            self._given.notify()

    def acquire(self, slot: int) -> memoryview:
        """The slot's memory for a reader, once every copy out of it has finished (blocks the
        calling reader thread with the GIL released)."""
        event = self._events[slot]
        if event is not None:
            event.synchronize()
        view = self._views[slot]
        if view is None:
            tensor = self._allocate()
            self._tensors[slot] = tensor
            view = self._views[slot] = memoryview(tensor.numpy().data)
        return view

    def tensor(self, slot: int) -> torch.Tensor:
        """The slot as a uint8 tensor, for copies out of it after a read filled it."""
        tensor = self._tensors[slot]
        assert tensor is not None, "slot read before it was acquired"
        return tensor

    def mark_copied(self, slot: int, stream: torch.cuda.Stream | None) -> torch.cuda.Event | None:
        """Record that every copy out of `slot` so far has been enqueued on `stream`; returns
        the event that completes with them (None off CUDA, where copies are done already)."""
        if stream is None:
            return None
        event = torch.cuda.Event()
        event.record(stream)
        self._events[slot] = event
        return event

    def _allocate(self) -> torch.Tensor:
        if not self.cuda:
            return page_aligned(self.slot_bytes, pinned=False)
        ready = prepin.take(self.slot_bytes)
        if ready is not None:
            return ready
        t0 = time.perf_counter()
        with torch.cuda.device(self.device):
            block = page_aligned(self.slot_bytes, pinned=True)
        with self._lock:
            self.pin_seconds += time.perf_counter() - t0
            self.pinned_here += 1
        return block
