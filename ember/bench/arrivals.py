"""When each request is sent: all at once, or a gamma-distributed arrival process."""

from __future__ import annotations

import math
import random


def arrival_offsets(n: int, rate: float, burstiness: float, rng: random.Random) -> list[float]:
    """Send times in seconds from the start of the run, one per request, non-decreasing.

    rate inf: all at 0 (the concurrency limit alone paces the run). Otherwise inter-arrival times
    are gamma(shape=burstiness, mean=1/rate): burstiness 1 is a Poisson process, below 1 burstier,
    above 1 more even. As in vLLM, the times are then scaled so the last request goes out at
    exactly n/rate: an unscaled sum strays 1-2% from it, which would move throughput between seeds.
    """
    if math.isinf(rate):
        return [0.0] * n
    scale = 1.0 / (rate * burstiness)
    offsets: list[float] = []
    t = 0.0
    for _ in range(n):
        t += rng.gammavariate(burstiness, scale)
        offsets.append(t)
    if offsets and offsets[-1] > 0:
        factor = (n / rate) / offsets[-1]
        offsets = [o * factor for o in offsets]
    return offsets
