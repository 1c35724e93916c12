"""Serving behaviour: probes, metrics, concurrency, admission (503), disconnects, CORS, start-up."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serverproc import COMMON_ARGS, Server, aborted, idle, start, wait_for

LONG = {"num_predict": 400, "temperature": 0}  # ~forever for a test: it gets cut off


def test_live_and_health(base_url: str) -> None:
    assert httpx.get(base_url + "/live").status_code == 200
    r = httpx.get(base_url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_metrics_use_vllm_names(server: Server) -> None:
    httpx.post(
        server.url + "/v1/completions",
        json={"model": "tiny", "prompt": "metrics", "max_tokens": 4},
        timeout=60,
    )
    text = httpx.get(server.url + "/metrics").text
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:num_preemptions_total",
        "vllm:request_success_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:request_queue_time_seconds_bucket",
        "ember:kv_cache_used_blocks",
    ):
        assert f"{name}{{" in text, name
    assert 'model_name="tiny:latest"' in text
    m = server.metrics()
    assert m["vllm:generation_tokens_total"] >= 4 and m["vllm:request_success_total"] >= 1
    assert m["vllm:time_to_first_token_seconds_count"] >= 1


def test_more_requests_than_slots_all_complete(base_url: str) -> None:
    def one(i: int) -> int:
        body = {
            "model": "tiny",
            "prompt": f"req {i}",
            "stream": False,
            "options": {"num_predict": 6},
        }
        r = httpx.post(base_url + "/api/generate", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return int(r.json()["eval_count"])

    with ThreadPoolExecutor(6) as pool:  # num_parallel is 2
        counts = list(pool.map(one, range(6)))
    assert all(1 <= c <= 6 for c in counts)


def test_stream_disconnect_frees_the_engine(server: Server) -> None:
    assert wait_for(lambda: idle(server))
    before = aborted(server)
    body = {"model": "tiny", "prompt": "go on forever", "options": LONG}
    with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(3):
            assert not json.loads(next(lines))["done"]
        busy = server.metrics()
        assert busy["vllm:num_requests_running"] == 1 and busy["ember:kv_cache_used_blocks"] > 0
    assert wait_for(lambda: idle(server) and aborted(server) == before + 1), server.metrics()


def test_sse_disconnect_frees_the_engine(server: Server) -> None:
    before = aborted(server)
    body = {"model": "tiny", "prompt": "go", "max_tokens": 400, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    assert wait_for(lambda: idle(server) and aborted(server) == before + 1), server.metrics()


def test_non_streaming_disconnect_frees_the_engine(server: Server) -> None:
    before = aborted(server)
    body = {"model": "tiny", "prompt": "long", "max_tokens": 480, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, timeout=0.2)
    assert wait_for(lambda: idle(server) and aborted(server) == before + 1), server.metrics()


def test_cors_allows_localhost_only_by_default(base_url: str) -> None:
    def preflight(origin: str) -> httpx.Response:
        headers = {"origin": origin, "access-control-request-method": "POST"}
        return httpx.options(base_url + "/api/chat", headers=headers)

    assert preflight("http://localhost:3000").headers["access-control-allow-origin"] == (
        "http://localhost:3000"
    )
    assert "access-control-allow-origin" not in preflight("https://evil.example").headers


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """num_parallel 1 and max_queue 1: a third concurrent request must be refused."""
    tmp = tmp_path_factory.mktemp("tight")
    s = Server(
        tmp / "tight.log",
        "tiny",
        *COMMON_ARGS,
        "--num-parallel",
        "1",
        "--max-queue",
        "1",
        env={"OLLAMA_ORIGINS": "https://*.example.com"},
    )
    try:
        s.wait_live()
        yield s
    finally:
        s.stop()


def test_requests_during_load_wait_for_the_model(tight_server: Server) -> None:
    health = httpx.get(tight_server.url + "/health")
    assert health.status_code in (200, 503)
    if health.status_code == 503:
        assert health.json()["status"] == "loading"
    r = httpx.post(
        tight_server.url + "/api/generate",
        json={"model": "tiny", "prompt": "early", "stream": False, "options": {"num_predict": 2}},
        timeout=120,
    )
    assert r.status_code == 200 and r.json()["done"] is True
    assert httpx.get(tight_server.url + "/health").status_code == 200


def test_queue_overflow_is_503(tight_server: Server) -> None:
    tight_server.wait_healthy()

    def one(i: int) -> tuple[int, dict[str, object]]:
        if i % 2:
            path, body = (
                "/v1/completions",
                {"prompt": "busy", "max_tokens": 300, "ignore_eos": True},
            )
        else:
            path, body = "/api/generate", {"prompt": "busy", "stream": False, "options": LONG}
        r = httpx.post(tight_server.url + path, json={"model": "tiny", **body}, timeout=120)
        return r.status_code, {"path": path, **r.json()}

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    statuses = sorted(s for s, _ in results)
    assert statuses.count(200) >= 2 and 503 in statuses, results
    for status, body in results:
        if status != 503:
            continue
        if body["path"] == "/api/generate":
            assert (
                body["error"] == "server busy, please try again.  maximum pending requests exceeded"
            )
        else:
            err = body["error"]
            assert isinstance(err, dict) and err["code"] == 503
    assert wait_for(lambda: idle(tight_server))


def test_origins_env_adds_wildcard_origins(tight_server: Server) -> None:
    headers = {"origin": "https://app.example.com", "access-control-request-method": "POST"}
    r = httpx.options(tight_server.url + "/v1/models", headers=headers)
    assert r.headers["access-control-allow-origin"] == "https://app.example.com"


def test_failed_load_reports_and_exits_non_zero(tmp_path: Path) -> None:
    s = Server(tmp_path / "bad.log", "no-such-model", *COMMON_ARGS)
    try:
        rc = s.proc.wait(timeout=60)
    finally:
        s.stop()
    assert rc != 0
    assert "no-such-model" in s.log() and "not found" in s.log()


def test_model_system_prompt_applies_unless_the_request_has_one(
    server: Server, tmp_path: Path, ember_home: Path
) -> None:
    from ember.registry import ModelStore

    store = ModelStore(ember_home)
    copy = store.copy("tiny", "tiny-sys:test")
    (copy.path / "system").write_text("You are a pirate.")
    s = start(tmp_path, "sys", "tiny-sys:test", *COMMON_ARGS)
    try:

        def prompt_tokens(url: str, **extra: object) -> int:
            body = {"model": extra.pop("model"), "prompt": "hi", "stream": False, **extra}
            r = httpx.post(url + "/api/generate", json={**body, "options": {"num_predict": 1}})
            assert r.status_code == 200, r.text
            return int(r.json()["prompt_eval_count"])

        explicit = prompt_tokens(server.url, model="tiny", system="You are a pirate.")
        assert prompt_tokens(s.url, model="tiny-sys:test") == explicit
        # As in Ollama: an empty system means "not set", so the model's applies.
        assert prompt_tokens(s.url, model="tiny-sys:test", system="") == explicit
    finally:
        s.stop()
        store.remove("tiny-sys:test")
