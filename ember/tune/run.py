"""Drive a running server through a ladder of concurrency levels with ember's benchmark."""

from __future__ import annotations

import sys
from dataclasses import replace

from ember.bench import BenchConfig, BenchError, run_benchmark
from ember.bench.stats import Distribution
from ember.tune.knee import LevelPoint

DEFAULT_LEVELS = (1, 2, 4, 8, 16, 32, 64)


def _pct(dist: Distribution, p: float) -> float:
    return dist.median if p == 50.0 else dist.percentiles.get(p, 0.0)


async def measure(base: BenchConfig, levels: list[int], prompts_per_level: int) -> list[LevelPoint]:
    """One benchmark per level, closed-loop at that concurrency; times in ms."""
    points: list[LevelPoint] = []
    for c in levels:
        cfg = replace(
            base,
            max_concurrency=c,
            num_prompts=max(prompts_per_level, 2 * c),
            percentiles=(50.0, 99.0),
            progress=False,
        )
        r = await run_benchmark(cfg)
        point = LevelPoint(
            concurrency=c,
            output_tok_s=r.output_throughput,
            request_s=r.request_throughput,
            ttft_p99_ms=_pct(r.ttft, 99.0),
            ttft_p50_ms=_pct(r.ttft, 50.0),
            tpot_p50_ms=_pct(r.tpot, 50.0),
            e2el_p50_ms=_pct(r.e2el, 50.0),
            failed=r.failed,
        )
        print(
            f"concurrency {c:4d}: {point.output_tok_s:9.1f} tok/s  p99 TTFT "
            f"{point.ttft_p99_ms:8.1f} ms  failed {point.failed}",
            file=sys.stderr,
        )
        points.append(point)
        if r.failed:
            # Past here the server refuses or drops requests: higher levels only fail more,
            # and a level that fails entirely has nothing to measure.
            first = r.errors[0]
            if r.completed == 0 or c == levels[0]:
                raise BenchError(
                    f"{r.failed} of {r.failed + r.completed} requests failed at concurrency {c}"
                    f" (first: {first}); fix that before tuning"
                )
            print(
                f"stopping the ladder: {r.failed} requests failed at concurrency {c} "
                f"(first: {first})",
                file=sys.stderr,
            )
            break
    return points
