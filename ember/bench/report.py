"""vLLM's `bench serve` result table, and the result as JSON under vLLM's field names."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from ember.bench.config import BenchConfig
from ember.bench.result import BenchResult
from ember.bench.stats import Distribution

WIDTH = 50
# (key in the JSON, name in the table, section header), in vLLM's order
METRICS = (
    ("ttft", "TTFT", "Time to First Token"),
    ("tpot", "TPOT", "Time per Output Token (excl. 1st token)"),
    ("itl", "ITL", "Inter-token Latency"),
)


def _p_word(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)


def _row(label: str, value: int | float) -> str:
    return f"{label:<40} {value:<10.2f}" if isinstance(value, float) else f"{label:<40} {value:<10}"


def format_result(result: BenchResult) -> str:
    """The table `vllm bench serve` prints, row for row (without a trailing newline)."""
    r, c = result, result.config
    lines = [f"{' Serving Benchmark Result ':=^{WIDTH}}"]
    lines.append(_row("Successful requests:", r.completed))
    lines.append(_row("Failed requests:", r.failed))
    if c.max_concurrency is not None:
        lines.append(_row("Maximum request concurrency:", c.max_concurrency))
    if not math.isinf(c.request_rate):
        lines.append(_row("Request rate configured (RPS):", float(c.request_rate)))
    lines += [
        _row("Benchmark duration (s):", r.duration_s),
        _row("Total input tokens:", r.total_input_tokens),
        _row("Total generated tokens:", r.total_output_tokens),
        _row("Request throughput (req/s):", r.request_throughput),
        _row("Output token throughput (tok/s):", r.output_throughput),
        _row("Peak output token throughput (tok/s):", r.max_output_tokens_per_s),
        _row("Peak concurrent requests:", float(r.max_concurrent_requests)),
        _row("Total token throughput (tok/s):", r.total_token_throughput),
    ]
    for key, name, header in METRICS:
        d: Distribution = getattr(r, key)
        lines.append(f"{header:-^{WIDTH}}")
        lines.append(_row(f"Mean {name} (ms):", d.mean))
        lines.append(_row(f"Median {name} (ms):", d.median))
        for p, value in d.percentiles.items():
            lines.append(_row(f"P{_p_word(p)} {name} (ms):", value))
    lines.append("=" * WIDTH)
    return "\n".join(lines)


def traffic_lines(c: BenchConfig) -> list[str]:
    """The lines vLLM prints before a run: rate, burstiness, concurrency."""
    kind = "Poisson process" if c.burstiness == 1.0 else "Gamma distribution"
    return [
        f"Traffic request rate: {c.request_rate}",
        f"Burstiness factor: {c.burstiness} ({kind})",
        f"Maximum request concurrency: {c.max_concurrency}",
    ]


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def result_json(result: BenchResult, detailed: bool = False) -> dict[str, Any]:
    """The result as vLLM saves it (same keys), plus ember's config; per-request lists only when
    detailed."""
    r, c = result, result.config
    config = {
        k: _finite(v) if isinstance(v, float) else v for k, v in dataclasses.asdict(c).items()
    }
    config["api_key"] = "<redacted>" if c.api_key else None
    out: dict[str, Any] = {
        "date": r.date,
        "endpoint_type": "openai-chat" if c.is_chat else "openai",
        "backend": "openai-chat" if c.is_chat else "openai",
        "label": "ember-bench",
        "model_id": r.model,
        "tokenizer_id": c.tokenizer,
        "num_prompts": c.num_prompts,
        "request_rate": _finite(c.request_rate),
        "burstiness": c.burstiness,
        "max_concurrency": c.max_concurrency,
        "duration": r.duration_s,
        "completed": r.completed,
        "failed": r.failed,
        "total_input_tokens": r.total_input_tokens,
        "total_output_tokens": r.total_output_tokens,
        "request_throughput": r.request_throughput,
        "request_goodput": None,
        "output_throughput": r.output_throughput,
        "total_token_throughput": r.total_token_throughput,
        "max_output_tokens_per_s": r.max_output_tokens_per_s,
        "max_concurrent_requests": r.max_concurrent_requests,
    }
    for key, d in (("ttft", r.ttft), ("tpot", r.tpot), ("itl", r.itl), ("e2el", r.e2el)):
        out[f"mean_{key}_ms"] = d.mean
        out[f"median_{key}_ms"] = d.median
        out[f"std_{key}_ms"] = d.std
        for p, value in d.percentiles.items():
            out[f"p{_p_word(p)}_{key}_ms"] = value
    if detailed:
        recs = r.records
        out["input_lens"] = [x.prompt_len for x in recs]
        out["output_lens"] = [x.output_tokens for x in recs]
        out["ttfts"] = [x.ttft for x in recs]
        out["itls"] = [x.itl for x in recs]
        out["latencies"] = [x.latency for x in recs]
        out["start_times"] = [x.start_time for x in recs]
        out["errors"] = [x.error for x in recs]
    out["config"] = config
    return out


def default_result_file(result: BenchResult) -> str:
    """vLLM's file name: {label}-{rate}qps[-concurrency{n}]-{model}-{date}.json."""
    c = result.config
    conc = f"-concurrency{c.max_concurrency}" if c.max_concurrency is not None else ""
    model = result.model.split("/")[-1].replace(":", "-")
    return f"ember-bench-{c.request_rate}qps{conc}-{model}-{result.date}.json"


def save_result(result: BenchResult, path: str | Path | None, detailed: bool = False) -> Path:
    file = Path(path) if path is not None else Path(default_result_file(result))
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(result_json(result, detailed), indent=2) + "\n")
    return file
