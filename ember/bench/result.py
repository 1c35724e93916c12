"""The result of a run: the numbers of vLLM's `bench serve` table, from the per-request records."""

from __future__ import annotations

from dataclasses import dataclass

from ember.bench.config import BenchConfig
from ember.bench.request import RequestRecord
from ember.bench.stats import (
    Distribution,
    distribution,
    inter_token_latencies,
    peak_concurrency,
    peak_tokens_per_s,
    tokens_per_chunk,
    tpot,
)


@dataclass(slots=True)
class BenchResult:
    config: BenchConfig
    model: str
    date: str  # local start time, "%Y%m%d-%H%M%S" as vLLM writes it
    duration_s: float
    completed: int
    failed: int
    total_input_tokens: int  # of successful requests, as the server counted them when it said
    total_output_tokens: int
    request_throughput: float  # requests/s
    output_throughput: float  # tokens/s
    total_token_throughput: float  # (input + output) tokens/s
    max_output_tokens_per_s: float  # the busiest one-second bucket
    max_concurrent_requests: int  # the most requests in flight at one instant
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2el: Distribution
    records: list[RequestRecord]

    @property
    def errors(self) -> list[str]:
        return [r.error for r in self.records if not r.success]


def finalize(rec: RequestRecord) -> None:
    """Fill chunk_tokens and itl of a successful record from its chunk times and usage."""
    rec.chunk_tokens = tokens_per_chunk(rec.chunk_times, rec.chunk_usage, rec.output_tokens)
    rec.itl = inter_token_latencies(rec.chunk_times, rec.chunk_tokens)


def summarize(
    config: BenchConfig, model: str, date: str, records: list[RequestRecord], duration_s: float
) -> BenchResult:
    ok = [r for r in records if r.success]
    for r in ok:
        finalize(r)
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    dur = max(duration_s, 1e-9)
    t0 = min((r.start_time for r in ok), default=0.0)
    token_events = [
        (r.start_time + t, k)
        for r in ok
        for t, k in zip(r.chunk_times, r.chunk_tokens, strict=True)
    ]
    tpots = [v for r in ok if (v := tpot(r.latency, r.ttft, r.output_tokens)) is not None]
    ps = config.percentiles
    return BenchResult(
        config=config,
        model=model,
        date=date,
        duration_s=duration_s,
        completed=len(ok),
        failed=len(records) - len(ok),
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        request_throughput=len(ok) / dur,
        output_throughput=total_out / dur,
        total_token_throughput=(total_in + total_out) / dur,
        max_output_tokens_per_s=peak_tokens_per_s(token_events, t0),
        max_concurrent_requests=peak_concurrency(
            [(r.start_time, r.start_time + r.latency) for r in ok]
        ),
        ttft=distribution([r.ttft for r in ok], ps),
        tpot=distribution(tpots, ps),
        itl=distribution([v for r in ok for v in r.itl], ps),
        e2el=distribution([r.latency for r in ok], ps),
        records=records,
    )
