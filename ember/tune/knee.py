"""The knee of a concurrency ladder: pure functions over measured points, no I/O."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(slots=True)
class LevelPoint:
    concurrency: int
    output_tok_s: float
    request_s: float
    ttft_p99_ms: float
    ttft_p50_ms: float
    tpot_p50_ms: float
    e2el_p50_ms: float
    failed: int


@dataclass(slots=True)
class Recommendation:
    knee: int  # the last level worth its concurrency
    num_parallel: int
    concurrency: int  # Cloud Run containerConcurrency
    hpa_target: int  # vllm:num_requests_waiting per pod
    reason: str


def find_knee(points: list[LevelPoint], min_gain: float = 0.10, ttft_factor: float = 3.0) -> int:
    """Index of the knee: the last level before throughput rises by less than `min_gain`
    (fraction) over the previous level, p99 TTFT exceeds `ttft_factor` x the first level's,
    or requests fail."""
    base_ttft = max(points[0].ttft_p99_ms, 1e-9)
    for i in range(1, len(points)):
        gain = points[i].output_tok_s / max(points[i - 1].output_tok_s, 1e-9) - 1.0
        p = points[i]
        if gain < min_gain or p.ttft_p99_ms > ttft_factor * base_ttft or p.failed:
            return i - 1
    return len(points) - 1


def recommend(
    points: list[LevelPoint], min_gain: float = 0.10, ttft_factor: float = 3.0
) -> Recommendation:
    if not points:
        raise ValueError("no measured levels")
    points = sorted(points, key=lambda p: p.concurrency)
    k = find_knee(points, min_gain, ttft_factor)
    knee = points[k]
    # Platform concurrency: past the knee, requests only queue; allow as much queue as keeps
    # p99 TTFT within ttft_factor of the knee's, and never more than a second batch.
    concurrency = knee.concurrency
    for p in points[k + 1 :]:
        if p.ttft_p99_ms <= ttft_factor * max(knee.ttft_p99_ms, 1e-9) and p.failed == 0:
            concurrency = p.concurrency
    concurrency = min(concurrency, 2 * knee.concurrency)
    hpa_target = max(1, (concurrency - knee.concurrency) // 2 or knee.concurrency // 2)
    saturated = k < len(points) - 1
    reason = (
        f"throughput stops rising by {min_gain:.0%}, p99 TTFT exceeds {ttft_factor:g}x or "
        f"requests fail after concurrency {knee.concurrency}"
        if saturated
        else f"throughput still rising at the top of the ladder ({knee.concurrency}); "
        "extend --levels to find the knee"
    )
    return Recommendation(knee.concurrency, knee.concurrency, concurrency, hpa_target, reason)


def to_json(points: list[LevelPoint], rec: Recommendation, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        **meta,
        "levels": [asdict(p) for p in points],
        "recommended": asdict(rec),
    }
