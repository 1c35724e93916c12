"""`ember bench` against the real `ember serve` (tiny model) on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ember.bench import BenchConfig, BenchError, format_result, run_benchmark
from tests.server.serverproc import Server, free_port

TABLE_ROWS = (
    "============ Serving Benchmark Result ============",
    "Successful requests:",
    "Failed requests:",
    "Maximum request concurrency:",
    "Benchmark duration (s):",
    "Total input tokens:",
    "Total generated tokens:",
    "Request throughput (req/s):",
    "Output token throughput (tok/s):",
    "Peak output token throughput (tok/s):",
    "Peak concurrent requests:",
    "Total token throughput (tok/s):",
    "---------------Time to First Token----------------",
    "Mean TTFT (ms):",
    "Median TTFT (ms):",
    "P99 TTFT (ms):",
    "-----Time per Output Token (excl. 1st token)------",
    "Mean TPOT (ms):",
    "Median TPOT (ms):",
    "P99 TPOT (ms):",
    "---------------Inter-token Latency----------------",
    "Mean ITL (ms):",
    "Median ITL (ms):",
    "P99 ITL (ms):",
    "==================================================",
)


def ember_bench(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    cmd = [sys.executable, "-m", "ember.cli", "bench", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def row(stdout: str, label: str) -> str:
    for line in stdout.splitlines():
        if line.startswith(label):
            return line[len(label) :].strip()
    raise AssertionError(f"no row {label!r} in:\n{stdout}")


def test_cli_run_prints_the_table_and_saves_json(bench_server: Server, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    r = ember_bench(
        "--base-url",
        bench_server.url,
        "--model",
        "tiny",
        "--dataset",
        "random",
        "--input-len",
        "32",
        "--output-len",
        "8",
        "--num-prompts",
        "20",
        "--max-concurrency",
        "4",
        "--ignore-eos",
        "--seed",
        "0",
        "--save-result",
        "--result-file",
        str(out),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    start = lines.index(TABLE_ROWS[0])
    table = lines[start : start + len(TABLE_ROWS)]
    assert [line if line[0] in "-=" else line[:40].rstrip() for line in table] == list(TABLE_ROWS)
    assert row(r.stdout, "Successful requests:") == "20"
    assert row(r.stdout, "Failed requests:") == "0"
    assert row(r.stdout, "Maximum request concurrency:") == "4"
    assert row(r.stdout, "Total input tokens:") == str(20 * 32)  # token-id prompts: exact
    assert row(r.stdout, "Total generated tokens:") == str(20 * 8)
    assert 1.0 <= float(row(r.stdout, "Peak concurrent requests:")) <= 4.0
    assert float(row(r.stdout, "Mean TTFT (ms):")) > 0
    assert float(row(r.stdout, "Mean ITL (ms):")) > 0

    saved = json.loads(out.read_text())
    assert saved["completed"] == 20 and saved["failed"] == 0
    assert saved["total_input_tokens"] == 640 and saved["total_output_tokens"] == 160
    assert saved["model_id"] == "tiny" and saved["max_concurrency"] == 4
    assert saved["request_rate"] == "inf" and saved["num_prompts"] == 20 and saved["date"]
    for key in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std", "p99"):
            assert saved[f"{stat}_{key}_ms"] >= 0
    for key in ("duration", "request_throughput", "output_throughput", "total_token_throughput"):
        assert saved[key] > 0
    assert saved["max_output_tokens_per_s"] > 0 and 1 <= saved["max_concurrent_requests"] <= 4
    assert saved["config"]["input_len"] == 32 and saved["config"]["ignore_eos"] is True


def test_finite_rate_through_the_library(bench_server: Server) -> None:
    config = BenchConfig(
        base_url=bench_server.url,
        model="tiny",
        input_len=16,
        output_len=4,
        num_prompts=10,
        request_rate=40.0,
        burstiness=1.0,
        ignore_eos=True,
        progress=False,
    )
    result = asyncio.run(run_benchmark(config))
    assert (result.completed, result.failed) == (10, 0)
    assert result.total_output_tokens == 40
    assert result.duration_s >= 10 / 40.0  # the last request leaves at exactly n/rate
    starts = sorted(r.start_time for r in result.records)
    assert starts[-1] - starts[0] > 0.1  # spread out, not all at once
    table = format_result(result)
    assert "Request rate configured (RPS):           40.00" in table
    assert "Maximum request concurrency:" not in table  # none was set


def test_chat_endpoint_counts_input_from_usage(bench_server: Server) -> None:
    config = BenchConfig(
        base_url=bench_server.url,
        endpoint="/v1/chat/completions",
        input_len=16,
        output_len=5,
        num_prompts=6,
        max_concurrency=3,
        ignore_eos=True,
        range_ratio=0.5,
        progress=False,
    )
    result = asyncio.run(run_benchmark(config))  # no model given: the first in /v1/models
    assert (result.completed, result.failed) == (6, 0)
    assert result.model.startswith("tiny")
    assert result.total_output_tokens == sum(r.output_len for r in result.records)
    # The chat template wraps each prompt, so the server counts more tokens than the words sent.
    assert all(r.prompt_len > 8 for r in result.records)
    assert result.ttft.mean > 0 and result.tpot.mean > 0


def test_wrong_model_counts_failures(bench_server: Server) -> None:
    config = BenchConfig(
        base_url=bench_server.url,
        model="no-such-model",
        input_len=8,
        output_len=4,
        num_prompts=5,
        max_concurrency=2,
        progress=False,
    )
    result = asyncio.run(run_benchmark(config))
    assert (result.completed, result.failed) == (0, 5)
    assert all("404" in e and "not found" in e for e in result.errors)
    assert "Successful requests:                     0" in format_result(result)

    r = ember_bench(
        "--base-url",
        bench_server.url,
        "--model",
        "no-such-model",
        "--num-prompts",
        "3",
        "--input-len",
        "8",
        "--output-len",
        "4",
        "--disable-tqdm",
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "Failed requests:                         3" in r.stdout
    assert "Error 0: HTTP 404: model 'no-such-model' not found" in r.stdout
    assert "all 3 requests failed" in r.stderr


def test_unreachable_server_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BenchError, match=r"connection refused.*ember serve"):
        asyncio.run(run_benchmark(BenchConfig(base_url=url, num_prompts=2, progress=False)))
    r = ember_bench("--base-url", url, "--num-prompts", "2")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"ember bench: error: cannot connect to {url}: connection refused" in r.stderr
