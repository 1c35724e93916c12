"""The arithmetic of a result: percentiles, tokens per streamed chunk, ITL, peaks."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class Distribution:
    """Summary of one latency metric, in milliseconds."""

    mean: float
    median: float
    std: float
    percentiles: dict[float, float]  # {99.0: p99_ms, ...}


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) with linear interpolation, as numpy computes it; 0 if empty."""
    if not values:
        return 0.0
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def distribution(values_s: Sequence[float], percentiles: Sequence[float]) -> Distribution:
    """Mean, median, population std and percentiles of values given in seconds, in ms."""
    if not values_s:
        return Distribution(0.0, 0.0, 0.0, {p: 0.0 for p in percentiles})
    ms = [v * 1000.0 for v in values_s]
    mean = math.fsum(ms) / len(ms)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in ms) / len(ms))
    return Distribution(mean, percentile(ms, 50), std, {p: percentile(ms, p) for p in percentiles})


def tpot(latency: float, ttft: float, output_tokens: int) -> float | None:
    """Time per output token after the first, in seconds; None with fewer than two tokens."""
    if output_tokens < 2:
        return None
    return (latency - ttft) / (output_tokens - 1)


def tokens_per_chunk(
    chunk_times: Sequence[float], chunk_usage: Sequence[int], output_tokens: int
) -> list[int]:
    """How many output tokens each content chunk carried.

    Exact when the server reported cumulative usage per chunk. Otherwise a chunk may hide tokens
    whose text was empty (a partial UTF-8 character, a skipped special token) or that a busy server
    sent together; those are told apart only by time. The first chunk is counted as one token, and
    the remaining output_tokens - 1 are shared among later chunks in proportion to the gap before
    each (at least one each): a gap that spans three decode steps most likely carries three tokens.
    """
    n = len(chunk_times)
    if n == 0:
        return []
    if chunk_usage:
        return [max(0, b - a) for a, b in itertools.pairwise([0, *chunk_usage])]
    if output_tokens <= n:
        return [1] * n
    if n == 1:
        return [output_tokens]
    gaps = [b - a for a, b in itertools.pairwise(chunk_times)]
    total = math.fsum(gaps)
    rest = output_tokens - 1
    want = [rest * g / total for g in gaps] if total > 0 else [rest / len(gaps)] * len(gaps)
    counts = [max(1, math.floor(w)) for w in want]
    diff = rest - sum(counts)
    if diff > 0:  # hand out the remainder to the largest fractional parts
        for i in sorted(range(len(want)), key=lambda i: counts[i] - want[i])[:diff]:
            counts[i] += 1
    while diff < 0:  # the minimum of one overshot: take back from the most over-given
        for i in sorted(range(len(want)), key=lambda i: want[i] - counts[i]):
            if diff < 0 and counts[i] > 1:
                counts[i] -= 1
                diff += 1
    return [1, *counts]


def inter_token_latencies(chunk_times: Sequence[float], chunk_tokens: Sequence[int]) -> list[float]:
    """One latency per token after the first chunk: a gap before a chunk of k tokens counts as
    k latencies of gap/k."""
    itl: list[float] = []
    for i in range(1, len(chunk_times)):
        k = chunk_tokens[i]
        if k > 0:
            itl.extend([(chunk_times[i] - chunk_times[i - 1]) / k] * k)
    return itl


def peak_tokens_per_s(token_events: Sequence[tuple[float, int]], t0: float) -> float:
    """The most tokens in any one-second bucket counted from t0; events are (time_s, tokens)."""
    buckets: dict[int, int] = {}
    for t, k in token_events:
        b = int(t - t0)
        buckets[b] = buckets.get(b, 0) + k
    return float(max(buckets.values(), default=0))


def peak_concurrency(intervals: Sequence[tuple[float, float]]) -> int:
    """The most [start, end) intervals open at one instant (an end at t precedes a start at t)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = open_ = 0
    for _, delta in events:
        open_ += delta
        peak = max(peak, open_)
    return peak
