"""A family of CUDA graphs of one forward, one per input size, sharing one memory pool.

Capturing every size costs start-up time (~35 ms a graph for an 8B model), and a serverless
start wants its first token soon. So a family is captured in two rounds: a few sizes before the
server says ready (`startup_sizes`: the smallest ones, which a first request uses, and the
largest, so that any batch fits by padding), the rest later, one at a time, while the engine is
idle or right after a step that had to pad past a missing size (`want`). Until a size is
captured, a batch of that size replays the smallest captured graph that holds it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from typing import Any

import torch

EARLY_SIZES = 4  # the smallest sizes captured before the server is ready


def startup_sizes(sizes: list[int], early: int = EARLY_SIZES) -> list[int]:
    """The sizes of a ladder to capture before ready: the `early` smallest and the largest."""
    ordered = sorted(sizes)
    return sorted({*ordered[:early], *ordered[-1:]})


class GraphFamily:
    def __init__(
        self,
        name: str,
        sizes: Iterable[int],
        forward: Callable[[int], torch.Tensor],
        device: torch.device,
        reset: Callable[[], None],
    ) -> None:
        """`forward(size)` runs the model on the first `size` rows of the static inputs;
        `reset()` puts the static inputs back to values safe to run on (no cache writes)."""
        self.name = name
        self.sizes = sorted(set(sizes))
        self.forward = forward
        self.device = device
        self.reset = reset
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self._wanted: set[int] = set()
        self._pool: Any = None  # torch's pool handle (its type's name differs across versions)

    @property
    def pending(self) -> list[int]:
        return [s for s in self.sizes if s not in self.graphs]

    @property
    def wanted(self) -> bool:
        return bool(self._wanted)

    def bucket(self, n: int) -> int | None:
        """The smallest captured size that holds `n` rows, or None."""
        return min((size for size in self.graphs if size >= n), default=None)

    def want(self, n: int) -> None:
        """Note that a batch of `n` rows ran; if its own size is not captured yet, it is next."""
        i = bisect.bisect_left(self.sizes, n)
        if i < len(self.sizes) and self.sizes[i] not in self.graphs:
            self._wanted.add(self.sizes[i])

    def next_pending(self) -> int | None:
        """The size to capture next: one a batch wanted, else the largest pending (largest first
        lets the smaller graphs reuse its pool)."""
        if self._wanted:
            return min(self._wanted)
        pending = self.pending
        return pending[-1] if pending else None

    def give_up(self) -> None:
        """Capture no more sizes (out of memory): batches use the captured ones."""
        self.sizes = sorted(self.graphs)
        self._wanted.clear()

    def _record(self, size: int, graph: torch.cuda.CUDAGraph, output: torch.Tensor) -> None:
        self.graphs[size] = graph
        self.outputs[size] = output
        self._wanted.discard(size)

    @torch.inference_mode()
    def capture(self, sizes: Iterable[int]) -> None:
        """Capture `sizes` (largest first) on a side stream. Each runs once eagerly before its
        capture, so Triton compiles and the allocator settles outside the graph. Work already
        queued on the current stream finishes first; the static inputs are reset before."""
        todo = sorted((s for s in set(sizes) if s not in self.graphs), reverse=True)
        if not todo:
            return
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        current = torch.cuda.current_stream(self.device)
        self.reset()  # on the current stream: after any replay still reading the inputs
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            for size in todo:
                self.forward(size)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool, stream=stream):
                    output = self.forward(size)
                self._record(size, graph, output)
        current.wait_stream(stream)
        torch.cuda.synchronize(self.device)
