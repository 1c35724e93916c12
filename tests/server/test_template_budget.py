"""Chat templates that would burn CPU or memory without bound, created through /api/create:
each request answers 400 within seconds, on both APIs, and the server stays responsive."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest
from serverproc import COMMON_ARGS, Server, start

NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
HUGE_STRING = "{{ 'x' * 10**10 }}"
DEADLINE_S = 10.0  # the budget is 2 s of the rendering thread's CPU; a busy CI core is slower


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home: Path = tmp_path_factory.mktemp("template-budget")
    s = start(home, "server", "tiny", *COMMON_ARGS, env={"EMBER_HOME": str(home)})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=60)


def test_an_endless_template_answers_400_and_the_server_stays_responsive(
    client: ollama.Client, server: Server
) -> None:
    assert client.create(model="loops", from_="tiny", template=NESTED_LOOPS).status == "success"
    live_waits: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            t0 = time.monotonic()
            httpx.get(server.url + "/live", timeout=10).raise_for_status()
            live_waits.append(time.monotonic() - t0)
            time.sleep(0.1)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(ollama.ResponseError) as err:
            client.chat(model="loops", messages=[{"role": "user", "content": "hi"}])
        assert time.monotonic() - t0 < DEADLINE_S
    finally:
        done.set()
        prober.join()
    assert err.value.status_code == 400
    assert "too expensive" in err.value.error and "template" in err.value.error
    assert live_waits and max(live_waits) < 2.0, live_waits
    ok = client.chat(
        model="tiny", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 2}
    )
    assert ok.message is not None


def test_a_huge_value_answers_400_at_once_on_both_apis(
    client: ollama.Client, server: Server
) -> None:
    modelfile = f'FROM tiny\nTEMPLATE """{HUGE_STRING}"""'
    r = httpx.post(
        server.url + "/api/create",
        json={"model": "huge", "modelfile": modelfile, "stream": False},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    t0 = time.monotonic()
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="huge", prompt="hi")
    assert err.value.status_code == 400 and "too expensive" in err.value.error
    body = {"model": "huge", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and "too expensive" in r.json()["error"]["message"]
    assert time.monotonic() - t0 < DEADLINE_S
