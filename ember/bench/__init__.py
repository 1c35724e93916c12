"""Load generation against OpenAI-compatible servers: `ember bench` and its library API.

    result = await run_benchmark(BenchConfig(base_url=..., model=..., max_concurrency=64))
    print(format_result(result))

Attributes are imported on first use so that `ember --help` does not pay for the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["BenchConfig", "BenchError", "BenchResult", "format_result", "run_benchmark"]

if TYPE_CHECKING:
    from ember.bench.config import BenchConfig, BenchError
    from ember.bench.report import format_result
    from ember.bench.result import BenchResult
    from ember.bench.runner import run_benchmark


def __getattr__(name: str) -> Any:
    if name in ("BenchConfig", "BenchError"):
        from ember.bench import config

        return getattr(config, name)
    if name == "BenchResult":
        from ember.bench.result import BenchResult

        return BenchResult
    if name == "format_result":
        from ember.bench.report import format_result

        return format_result
    if name == "run_benchmark":
        from ember.bench.runner import run_benchmark

        return run_benchmark
    raise AttributeError(f"module 'ember.bench' has no attribute {name!r}")
