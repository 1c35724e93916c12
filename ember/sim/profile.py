"""What one instance does at each concurrency: TTFT and time per output token, and its cold start."""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True)
class Profile:
    concurrency: list[int]  # ascending ladder levels
    ttft_s: list[float]  # time to first token when that many are in service (s)
    tpot_s: list[float]  # time per output token at that concurrency (s)
    slots: int  # requests served at once (num_parallel); more wait in the instance's queue
    cold_start_s: float = 30.0

    def _interp(self, ys: list[float], n: int) -> float:
        xs = self.concurrency
        if n <= xs[0]:
            return ys[0]
        if n >= xs[-1]:
            return ys[-1]
        i = bisect.bisect_right(xs, n)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (n - x0) / (x1 - x0)

    def ttft(self, n: int) -> float:
        return self._interp(self.ttft_s, n)

    def tpot(self, n: int) -> float:
        return self._interp(self.tpot_s, n)

    @classmethod
    def flat(cls, slots: int, ttft_s: float, tpot_s: float, cold_start_s: float) -> Profile:
        """Latency independent of load up to `slots` (given by flags)."""
        return cls([1], [ttft_s], [tpot_s], slots, cold_start_s)

    @classmethod
    def from_tune(cls, path: Path, cold_start_s: float | None = None) -> Profile:
        """From `ember tune` JSON: levels up to the knee; slots = its num_parallel."""
        data = json.loads(path.read_text())
        levels = sorted(data["levels"], key=lambda p: p["concurrency"])
        slots = int(data["recommended"]["num_parallel"])
        if slots < 1:
            raise ValueError(f"{path}: recommended num_parallel is {slots}; it must be >= 1")
        levels = [p for p in levels if p["concurrency"] <= slots] or levels[:1]
        cold = cold_start_s if cold_start_s is not None else data.get("load_time_s") or 30.0
        return cls(
            [int(p["concurrency"]) for p in levels],
            [p["ttft_p50_ms"] / 1000.0 for p in levels],
            [p["tpot_p50_ms"] / 1000.0 for p in levels],
            slots,
            float(cold),
        )
