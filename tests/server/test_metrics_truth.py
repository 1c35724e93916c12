"""The numbers an autoscaler and a dashboard read: nothing waits while the server loads its own
model, the warm-up's tokens are not counted, counters keep growing across an unload and a
reload, a request's latencies include its wait for the model, and tokens generated past a stop
string (before the core heard of the stop) are not counted as generated."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serverproc import COMMON_ARGS, Server

TOKENS = "vllm:generation_tokens_total"
PROMPT = "vllm:prompt_tokens_total"
TTFT_SUM = "vllm:time_to_first_token_seconds_sum"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, list[float]]]:
    """A server, and vllm:num_requests_waiting at each scrape while it loaded its model."""
    tmp: Path = tmp_path_factory.mktemp("metrics")
    server = Server(tmp / "metrics.log", "tiny", *COMMON_ARGS)
    waiting: list[float] = []
    try:
        server.wait_live()
        deadline = time.monotonic() + 120
        while httpx.get(server.url + "/health", timeout=5).status_code != 200:
            waiting.append(server.metrics()["vllm:num_requests_waiting"])
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.02)
        yield server, waiting
    finally:
        server.stop()


def completion(server: Server, **body: object) -> dict[str, object]:
    r = httpx.post(
        server.url + "/v1/completions",
        json={"model": "tiny", "prompt": "count", "temperature": 0, **body},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    usage: dict[str, object] = r.json()["usage"]
    return usage


def test_nothing_waits_while_the_server_loads_its_own_model(
    fresh: tuple[Server, list[float]],
) -> None:
    _, waiting = fresh
    assert waiting and set(waiting) == {0.0}


def test_counters_count_requests_only_and_never_fall(fresh: tuple[Server, list[float]]) -> None:
    server, _ = fresh
    m = server.metrics()
    assert m[TOKENS] == 0 and m[PROMPT] == 0  # the warm-up request is not a request
    usage = completion(server, max_tokens=4, ignore_eos=True)
    m = server.metrics()
    assert m[TOKENS] == 4 and m[PROMPT] == usage["prompt_tokens"]
    unload = {"model": "tiny", "keep_alive": 0}
    assert httpx.post(server.url + "/api/generate", json=unload, timeout=60).json()["done"]
    assert httpx.get(server.url + "/api/ps").json()["models"] == []
    after = server.metrics()
    assert after[TOKENS] == 4 and after[PROMPT] == m[PROMPT]
    t0 = time.monotonic()
    body = {"model": "tiny", "prompt": "again", "stream": False, "options": {"num_predict": 3}}
    r = httpx.post(server.url + "/api/generate", json=body, timeout=120).json()
    assert time.monotonic() - t0 >= r["load_duration"] / 1e9 > 0  # it waited for the reload
    m = server.metrics()
    assert m[TOKENS] == 4 + r["eval_count"]
    assert m[PROMPT] == after[PROMPT] + r["prompt_eval_count"]
    assert m[TTFT_SUM] - after[TTFT_SUM] >= r["load_duration"] / 1e9  # the wait is latency


def test_tokens_past_a_stop_string_are_not_counted(fresh: tuple[Server, list[float]]) -> None:
    server, _ = fresh
    text = httpx.post(
        server.url + "/v1/completions",
        json={"model": "tiny", "prompt": "stop", "max_tokens": 16, "temperature": 0},
        timeout=60,
    ).json()["choices"][0]["text"]
    stop = text[2:5]
    assert stop.strip()
    before = server.metrics()[TOKENS]
    usage = [completion(server, prompt="stop", max_tokens=16, stop=[stop]) for _ in range(4)]
    assert server.metrics()[TOKENS] - before == sum(int(str(u["completion_tokens"])) for u in usage)


def test_every_series_exists_from_the_first_scrape(tmp_path: Path) -> None:
    """As vLLM's: request_success by each finish reason and the latency histograms are there,
    at zero, before the first request (a rate() over a series born at its first event misses
    that event)."""
    server = Server(tmp_path / "zero.log", "tiny", *COMMON_ARGS)
    try:
        server.wait_healthy()
        text = httpx.get(server.url + "/metrics", timeout=5).text
    finally:
        server.stop()
    for reason in ("stop", "length", "abort"):
        assert (
            f'vllm:request_success_total{{finished_reason="{reason}",model_name="tiny:latest"}} 0.0'
            in text
        )
    for name in ("time_to_first_token", "inter_token_latency", "e2e_request_latency"):
        assert f'vllm:{name}_seconds_count{{model_name="tiny:latest"}} 0.0' in text
