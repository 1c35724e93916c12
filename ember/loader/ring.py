"""A fixed ring of host buffers that reads land in and device copies leave from.

On CUDA each slot is pinned memory, so host-to-device copies are true async DMA; each slot
carries an event recorded after its last copy, and a reader waits on that event before it reuses
the slot. On the CPU the slots are plain memory and copies finish before a slot is handed back.

Slots are allocated by the reader that first uses them: pinning takes time (pinned.py), and this
way it is spread over the readers and overlaps the first reads instead of delaying them all. On
CUDA a slot pinned ahead (prepin.py) is taken first. `pin_seconds` sums the readers' time spent
pinning (for the loader's log line).
"""

from __future__ import annotations

import threading
import time

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
        # CUDA creates an event at its first record; waiting on one never recorded returns at once.
        self._events = [torch.cuda.Event() for _ in range(slots)] if self.cuda else []
        self._lock = threading.Lock()
        self.pin_seconds = 0.0
        self.pinned_here = 0  # slots this ring pinned itself (not taken from prepin)

    def __len__(self) -> int:
        return len(self._tensors)

    def acquire(self, slot: int) -> memoryview:
        """The slot's memory for a reader, once every copy out of it has finished (blocks the
        calling reader thread with the GIL released). One reader holds a slot at a time."""
        if self.cuda:
            self._events[slot].synchronize()
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

    def mark_copied(self, slot: int, stream: torch.cuda.Stream | None) -> None:
        """Record that every copy out of `slot` so far has been enqueued on `stream`."""
        if stream is not None:
            self._events[slot].record(stream)

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
