"""Shutdown and faults on the real server: SIGTERM drains (health 503 "draining", new requests
503, in-flight ones finish, exit 0); at the drain deadline running streams end with an error
chunk, not a cut connection; a dead engine makes /health 503 and the process exit non-zero."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from serverproc import COMMON_ARGS, Server, start

from ember.engine.faults import ENV


class Stream(threading.Thread):
    """One streaming request read to its end; `first` is set at its first chunk."""

    def __init__(self, server: Server, openai: bool, tokens: int) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.openai = openai
        self.tokens = tokens
        self.first = threading.Event()
        self.lines: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        if self.openai:
            path = "/v1/completions"
            body: dict[str, Any] = {"prompt": "drain", "max_tokens": self.tokens, "stream": True}
            body["ignore_eos"] = True
        else:
            path = "/api/generate"
            body = {"prompt": "drain", "options": {"num_predict": self.tokens, "temperature": 0}}
        try:
            url = self.server.url + path
            with httpx.stream("POST", url, json={"model": "tiny", **body}, timeout=60) as r:
                for line in r.iter_lines():
                    if line:
                        self.lines.append(line)
                        self.first.set()
        except BaseException as e:
            self.error = e
        finally:
            self.first.set()

    def outcome(self) -> str:
        """ "done", "error" (a proper error chunk at the end) or what went wrong."""
        assert self.error is None, self.error
        if self.openai:
            assert self.lines[-1] == "data: [DONE]", self.lines[-3:]
            last = json.loads(self.lines[-2].removeprefix("data: "))
            if "error" in last:
                return "error"
            assert last["choices"][0]["finish_reason"] == "length", last
            return "done"
        last = json.loads(self.lines[-1])
        if "error" in last:
            return "error"
        assert last["done"] is True, last
        return "done"


def streams(server: Server, n: int, tokens: int) -> list[Stream]:
    out = [Stream(server, openai=i % 2 == 1, tokens=tokens) for i in range(n)]
    for s in out:
        s.start()
    for s in out:
        assert s.first.wait(timeout=60)
    return out


def test_sigterm_drains_without_losing_a_request(tmp_path: Path) -> None:
    server = start(tmp_path, "drain", "tiny", *COMMON_ARGS, "--num-parallel", "4")
    try:
        running = streams(server, 6, tokens=400)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        health = httpx.get(server.url + "/health", timeout=5)
        assert health.status_code == 503 and health.json()["status"] == "draining"
        assert httpx.get(server.url + "/live", timeout=5).status_code == 200
        r = httpx.post(
            server.url + "/api/generate", json={"model": "tiny", "prompt": "late"}, timeout=5
        )
        assert r.status_code == 503 and "shutting down" in r.json()["error"]
        assert r.headers["retry-after"] == "1"
        for s in running:
            s.join(timeout=30)
        assert [s.outcome() for s in running] == ["done"] * 6
        assert server.proc.wait(timeout=15) == 0, server.log()
    finally:
        server.stop()


def test_requests_past_the_drain_deadline_end_with_an_error_chunk(tmp_path: Path) -> None:
    server = start(
        tmp_path, "deadline", "tiny", *COMMON_ARGS, "--num-parallel", "4", "--drain-timeout", "0.3"
    )
    try:
        running = streams(server, 4, tokens=500)
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        for s in running:
            s.join(timeout=30)
        outcomes = [s.outcome() for s in running]
        assert "error" in outcomes, outcomes
        assert server.proc.wait(timeout=15) == 0, server.log()
        assert time.monotonic() - t0 < 5
        for s in running:
            if s.outcome() == "error":
                text = s.lines[-1] if not s.openai else s.lines[-2]
                assert "shutting down" in text
    finally:
        server.stop()


def test_a_second_signal_stops_the_requests_cleanly_at_once(tmp_path: Path) -> None:
    """With a long drain ahead, a second SIGTERM brings its deadline forward: every stream still
    ends with its error chunk (or its last token), none is cut, and the process exits 0."""
    args = ("--num-parallel", "4", "--drain-timeout", "60", "--context-length", "4096")
    server = start(tmp_path, "hurry", "tiny", *COMMON_ARGS, *args)
    try:
        running = streams(server, 4, tokens=4000)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        for s in running:
            s.join(timeout=30)
        assert all(s.outcome() in ("error", "done") for s in running)
        assert "error" in [s.outcome() for s in running]
        assert server.proc.wait(timeout=15) == 0, server.log()
        assert time.monotonic() - t0 < 10
    finally:
        server.stop()


def test_engine_death_fails_health_and_exits_non_zero(tmp_path: Path) -> None:
    # step 1 is the warm-up; the first request's third step kills the engine thread
    server = Server(tmp_path / "dead.log", "tiny", *COMMON_ARGS, env={ENV: "crash@4"})
    try:
        server.wait_healthy()
        r = httpx.post(
            server.url + "/api/generate",
            json={"model": "tiny", "prompt": "die", "options": {"num_predict": 50}},
            timeout=30,
        )
        last = json.loads(r.text.strip().splitlines()[-1])
        assert "engine" in last["error"], last
        rc = server.proc.wait(timeout=15)
        assert rc == 1, server.log()
        assert "exiting so that the platform restarts" in server.log()
    finally:
        server.stop()


def test_disconnect_during_prefill_frees_the_engine(tmp_path: Path) -> None:
    # One prompt token per step: a 1,500-token prompt is in prefill for 1,500 steps (~1 s on a
    # 2-core machine; 400 took ~0.3 s there, as long as the client's patience below).
    args = ("--max-num-batched-tokens", "1", "--context-length", "2048")
    server = start(tmp_path, "prefill", "tiny", *COMMON_ARGS, *args)
    try:
        before = server.metrics()
        body = {"model": "tiny", "prompt": [7] * 1500, "max_tokens": 5, "stream": True}
        try:
            with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=0.3) as r:
                r.read()
        except httpx.ReadTimeout:
            pass  # the client gave up before the first token: the request was in prefill
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            m = server.metrics()
            if m["ember:kv_cache_used_blocks"] == 0 and m["vllm:num_requests_running"] == 0:
                break
            time.sleep(0.05)
        assert m["ember:kv_cache_used_blocks"] == 0 and m["vllm:num_requests_running"] == 0, m
        aborts = m.get("vllm:request_success_total:abort", 0)
        assert aborts == before.get("vllm:request_success_total:abort", 0) + 1, m
        # it never reached decode
        assert m["vllm:generation_tokens_total"] == before["vllm:generation_tokens_total"]
    finally:
        server.stop()
