"""Request traces: the Azure LLM inference trace CSV, or synthetic Poisson / bursty arrivals."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(slots=True)
class Arrival:
    t: float  # seconds from the start of the trace
    input_tokens: int
    output_tokens: int


def _timestamp(text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    # The Azure trace writes 7 fractional digits ("2023-11-16 18:15:46.6805900"); Python takes 6.
    head, dot, frac = text.partition(".")
    if dot:
        text = f"{head}.{frac[:6]}"
    return datetime.fromisoformat(text).timestamp()


def read_azure_csv(path: Path, limit_s: float | None = None) -> list[Arrival]:
    """Rows of TIMESTAMP,ContextTokens,GeneratedTokens, re-based to start at t = 0."""
    rows: list[tuple[float, int, int]] = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            rows.append(
                (
                    _timestamp(row["TIMESTAMP"]),
                    int(row["ContextTokens"]),
                    int(row["GeneratedTokens"]),
                )
            )
    if not rows:
        raise ValueError(
            f"{path} holds no requests (expected TIMESTAMP,ContextTokens,GeneratedTokens)"
        )
    rows.sort()
    t0 = rows[0][0]
    out = [Arrival(t - t0, i, o) for t, i, o in rows]
    return [a for a in out if limit_s is None or a.t <= limit_s]


def synthetic(
    rate: float,
    duration_s: float,
    seed: int,
    input_tokens: int = 512,
    output_tokens: int = 128,
    burstiness: float = 1.0,
    burst_factor: float = 1.0,
    burst_period_s: float = 600.0,
    constant: bool = False,
) -> list[Arrival]:
    """Gamma inter-arrivals (burstiness 1 = Poisson; `constant` = evenly spaced). With
    burst_factor > 1 the rate alternates between rate and rate x burst_factor every half period."""
    rng = random.Random(seed)
    out: list[Arrival] = []
    t = 0.0
    while True:
        phase_high = burst_factor > 1 and (t % burst_period_s) >= burst_period_s / 2
        r = rate * (burst_factor if phase_high else 1.0)
        if constant:
            t += 1.0 / r
        else:
            t += rng.gammavariate(burstiness, 1.0 / (r * burstiness))
        if t > duration_s:
            return out
        out.append(Arrival(t, input_tokens, output_tokens))
