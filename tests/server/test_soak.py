"""Soak: 1500 mixed streaming requests (Ollama and OpenAI, generate and chat) at
concurrency 32, a third of them abandoned mid-stream, against the real server. Afterwards no
request is running and no KV block is in use: nothing leaked. Seeded, so every run is the same."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from serverproc import COMMON_ARGS, Server, start

NUM_REQUESTS = 1500
CONCURRENCY = 32
HI = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def soak_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("soak")
    args = [a if a != "512" else "128" for a in COMMON_ARGS]  # --context-length 128
    s = start(tmp, "soak", "tiny", *args, "--num-parallel", "8", "--max-queue", "64")
    yield s
    s.stop()


def request_for(i: int, rng: random.Random) -> tuple[str, dict[str, Any]]:
    tokens = rng.randint(1, 8)
    prompt = f"soak {i} " * rng.randint(1, 6)
    kind = i % 4
    if kind == 0:
        return "/api/generate", {"prompt": prompt, "options": {"num_predict": tokens}}
    if kind == 1:
        return "/api/chat", {"messages": HI, "options": {"num_predict": tokens}}
    body = {"max_tokens": tokens, "stream": True, "ignore_eos": rng.random() < 0.5}
    if kind == 2:
        return "/v1/completions", {**body, "prompt": prompt}
    return "/v1/chat/completions", {**body, "messages": HI}


async def one(client: httpx.AsyncClient, i: int, rng: random.Random) -> str:
    path, body = request_for(i, rng)
    leave_after = rng.randint(0, 3) if rng.random() < 0.33 else None
    async with client.stream("POST", path, json={"model": "tiny", **body}) as r:
        if r.status_code != 200:
            return f"status {r.status_code}"
        lines: list[str] = []
        async for line in r.aiter_lines():
            if not line:
                continue
            lines.append(line)
            if leave_after is not None and len(lines) > leave_after:
                return "left"  # closing the stream here is the client's disconnect
    last = lines[-1]
    if path.startswith("/v1/"):
        ok = last == "data: [DONE]" and "error" not in json.loads(lines[-2].removeprefix("data: "))
    else:
        ok = json.loads(last).get("done") is True
    return "done" if ok else f"bad end: {lines[-2:]}"


def test_soak_leaks_nothing(soak_server: Server) -> None:
    rng = random.Random(8)

    async def main() -> Counter[str]:
        limits = httpx.Limits(max_connections=CONCURRENCY)
        timeout = httpx.Timeout(60.0)
        async with httpx.AsyncClient(
            base_url=soak_server.url, limits=limits, timeout=timeout
        ) as client:
            sem = asyncio.Semaphore(CONCURRENCY)

            async def bounded(i: int) -> str:
                async with sem:
                    return await one(client, i, rng)

            return Counter(await asyncio.gather(*(bounded(i) for i in range(NUM_REQUESTS))))

    t0 = time.monotonic()
    outcomes = asyncio.run(main())
    elapsed = time.monotonic() - t0
    assert set(outcomes) <= {"done", "left"}, outcomes
    assert outcomes["done"] > NUM_REQUESTS // 2 and outcomes["left"] > 0, outcomes

    deadline = time.monotonic() + 15
    while True:
        m = soak_server.metrics()
        idle = m["vllm:num_requests_running"] == 0 and m["ember:kv_cache_used_blocks"] == 0
        if idle or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert m["vllm:num_requests_running"] == 0, m
    assert m["vllm:num_requests_waiting"] == 0, m
    assert m["ember:kv_cache_used_blocks"] == 0, m
    assert httpx.get(soak_server.url + "/health").status_code == 200
    print(f"soak: {NUM_REQUESTS} requests in {elapsed:.1f}s: {dict(outcomes)}")
