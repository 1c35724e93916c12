"""`ember serve --async-scheduling` answers exactly as the default server does, through the
official clients, with concurrent streams and a client that goes away mid-stream."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from serverproc import COMMON_ARGS, Server, start

PROMPTS = ["Once upon a time", "The quick brown fox", "1, 2, 3,", "Hello", "Why is the sky"]


@pytest.fixture(scope="module")
def async_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("async")
    s = start(tmp, "async", "tiny", *COMMON_ARGS, "--num-parallel", "4", "--async-scheduling")
    yield s
    s.stop()


def completions(url: str) -> list[str]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")

    def one(prompt: str) -> str:
        stream = client.completions.create(
            model="tiny", prompt=prompt, max_tokens=24, temperature=0, stream=True
        )
        return "".join(chunk.choices[0].text for chunk in stream if chunk.choices)

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        return list(pool.map(one, PROMPTS))


def test_same_answers_as_the_default_server(server: Server, async_server: Server) -> None:
    assert completions(async_server.url) == completions(server.url)
    ask = {"model": "tiny", "prompt": "Tell me", "options": {"temperature": 0, "num_predict": 16}}
    a = ollama.Client(host=async_server.url).generate(**ask)
    b = ollama.Client(host=server.url).generate(**ask)
    assert a.response == b.response and a.eval_count == b.eval_count == 16


def test_a_client_leaving_mid_stream_frees_everything(async_server: Server) -> None:
    body = {"model": "tiny", "prompt": "Go on", "max_tokens": 400, "stream": True}
    with httpx.stream("POST", async_server.url + "/v1/completions", json=body) as r:
        for n, _ in enumerate(r.iter_lines()):
            if n > 3:
                break  # closes the connection mid-stream
    completions(async_server.url)  # the server goes on serving
    metrics = httpx.get(async_server.url + "/metrics").text
    for name in ("vllm:num_requests_running", "vllm:kv_cache_usage_perc"):
        values = [ln for ln in metrics.splitlines() if ln.startswith(name)]
        assert values and all(float(ln.rsplit(" ", 1)[1]) == 0 for ln in values), name
