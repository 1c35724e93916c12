"""Several models resident at once: preloaded at start (/health waits for them), loaded on
demand, unloaded by keep-alive and to stay under --max-loaded-models (the idle model whose
keep-alive ends soonest goes first), an empty prompt loads and with keep_alive 0 unloads; metrics
carry each model's name."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import ollama
import pytest
from serverproc import COMMON_ARGS, Server, start

from ember.engine.messages import EngineStats
from ember.registry import ModelStore
from ember.server.metrics import EngineSnapshot

ARGS = ("--max-loaded-models", "2", "--kv-cache-memory-gb", "0.02", *COMMON_ARGS)
SHORT = {"temperature": 0, "num_predict": 2}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("residency-home")
    store = ModelStore(home)
    store.copy("tiny", "alpha")
    store.copy("tiny", "beta")
    s = start(home, "server", "tiny", "--preload", "alpha", *ARGS, env={"EMBER_HOME": str(home)})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=60)


def loaded(client: ollama.Client) -> dict[str, str]:
    """Loaded model -> its expires_at (ISO)."""
    return {m.model or "": str(m.expires_at) for m in client.ps().models}


def test_preloaded_models_are_ready_when_health_is_200(
    server: Server, client: ollama.Client
) -> None:
    body = httpx.get(server.url + "/health").json()
    assert body["status"] == "ok" and sorted(body["models"]) == ["alpha:latest", "tiny:latest"]
    models = client.ps().models
    assert sorted(m.model or "" for m in models) == ["alpha:latest", "tiny:latest"]
    for m in models:
        assert m.expires_at is not None and m.expires_at.year > 2300  # preloaded: kept
        assert m.context_length == 512 and m.size_vram == 0 and (m.size or 0) > 0
        assert m.details is not None and m.details.family == "llama"


def test_the_limit_unloads_the_least_recently_used_idle_model(client: ollama.Client) -> None:
    client.generate(model="tiny", prompt="hi", options=SHORT)  # alpha is now the LRU
    r = client.generate(model="beta", prompt="hi", options=SHORT, keep_alive="10m")
    assert r.done and r.eval_count
    assert sorted(loaded(client)) == ["beta:latest", "tiny:latest"]


def test_the_model_whose_keep_alive_ends_first_goes_first_and_expiry_unloads(
    client: ollama.Client,
) -> None:
    # tiny is kept forever, beta for 10 minutes: loading alpha unloads beta.
    client.generate(model="alpha", prompt="hi", options=SHORT, keep_alive=1)
    assert sorted(loaded(client)) == ["alpha:latest", "tiny:latest"]
    deadline = time.monotonic() + 10
    while "alpha:latest" in loaded(client) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(loaded(client)) == ["tiny:latest"]


def test_empty_prompt_loads_and_keep_alive_0_unloads(client: ollama.Client) -> None:
    r = client.generate(model="beta", prompt="")
    assert r.done and r.done_reason == "load"
    assert "beta:latest" in loaded(client)
    r = client.generate(model="beta", prompt="", keep_alive=0)
    assert r.done and r.done_reason == "unload"
    assert "beta:latest" not in loaded(client)
    chat = client.chat(model="alpha", messages=[], keep_alive="2m")
    assert chat.done_reason == "load"
    expires = loaded(client)["alpha:latest"]
    assert not expires.startswith("2318")


def test_a_request_with_keep_alive_0_unloads_after_its_response(client: ollama.Client) -> None:
    r = client.generate(model="beta", prompt="hi", options=SHORT, keep_alive=0)
    assert r.done and r.eval_count
    deadline = time.monotonic() + 5
    while "beta:latest" in loaded(client) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "beta:latest" not in loaded(client)


def test_requests_wait_for_a_busy_model_to_become_idle(server: Server) -> None:
    """With both slots busy streaming, a request for a third model waits, then loads."""
    import threading

    # Loaded now: tiny (forever) and alpha. Hold both busy with long generations.
    opts = {"temperature": 0, "num_predict": 200}
    results: dict[str, int] = {}

    def generate(model: str, options: dict[str, object], key: str) -> None:
        r = httpx.post(
            server.url + "/api/generate",
            json={"model": model, "prompt": "hi", "options": options, "stream": False},
            timeout=60,
        )
        results[key] = r.status_code

    busy = [threading.Thread(target=generate, args=(m, opts, m)) for m in ("tiny", "alpha")]
    for t in busy:
        t.start()
    time.sleep(0.3)
    waiter = threading.Thread(target=generate, args=("beta", SHORT, "beta"))
    waiter.start()
    for t in [*busy, waiter]:
        t.join(60)
    assert results == {"tiny": 200, "alpha": 200, "beta": 200}


def test_metrics_are_labelled_per_model(server: Server, client: ollama.Client) -> None:
    client.generate(model="beta", prompt="hi", options=SHORT)
    client.generate(model="alpha", prompt="hi", options=SHORT)
    text = httpx.get(server.url + "/metrics").text
    resident = loaded(client)
    assert len(resident) == 2 and "alpha:latest" in resident
    for name in resident:
        assert f'vllm:num_requests_running{{model_name="{name}"}}' in text
    assert 'vllm:request_success_total{finished_reason="length",model_name="alpha:latest"}' in text


def test_unknown_model_is_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="nope", prompt="hi")
    assert e.value.status_code == 404 and e.value.error == "model 'nope' not found"


def test_a_model_created_while_serving_is_served(server: Server, tmp_path: Path) -> None:
    client = ollama.Client(host=server.url, timeout=60)
    client.copy("tiny", "gamma")
    r = client.generate(model="gamma", prompt="hi", options=SHORT)
    assert r.done and r.eval_count


def test_show_describes_a_model_without_loading_it(server: Server) -> None:
    """Ollama's /api/show reads the store: asking about a model must not load it (nor unload
    another to make room)."""
    client = ollama.Client(host=server.url, timeout=60)
    client.copy("tiny", "delta")
    before = sorted(loaded(client))
    shown = client.show("delta")
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.template and shown.modelinfo
    assert shown.modelinfo["llama.context_length"] == 4096  # trained, as in Ollama
    assert "completion" in (shown.capabilities or [])
    assert sorted(loaded(client)) == before and "delta:latest" not in before
    loaded_name = before[0].removesuffix(":latest")
    assert client.show(loaded_name).modelinfo  # a loaded model is described too


class FakeEngine:
    def stats(self) -> EngineStats:
        return EngineStats(0, 0, 0, 0.0, 0, 1, 0, 0, 0, 0, 0)


class FakeServed:
    """A model that loads at once and takes a while to unload, standing in for ServedModel."""

    unloads: ClassVar[list[str]] = []

    def __init__(self, config: object, model: str, store: object) -> None:
        self.name = self.model = model
        self.engine: FakeEngine | None = None
        self.status = "loading"
        self.gpu_share: float | None = None
        self.ready = False
        self.counters_base = EngineSnapshot()

    def matches(self, requested: str) -> bool:
        return requested == self.model

    async def load(self) -> None:
        self.engine, self.status, self.ready = FakeEngine(), "ok", True

    async def wait_ready(self, counted: bool = True) -> object:
        while not self.ready:
            await asyncio.sleep(0.01)
        return self.engine

    def shutdown(self) -> None:
        time.sleep(0.3)
        FakeServed.unloads.append(self.model)
        self.engine = None


def test_residency_evicts_one_model_at_a_time_and_waits_for_busy_ones(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ember.config import ServeConfig
    from ember.server import residency

    monkeypatch.setattr(residency, "ServedModel", FakeServed)
    monkeypatch.setattr(residency, "_WAKE_S", 0.05)  # wake often: the bug was a second victim
    FakeServed.unloads = []
    config = ServeConfig(model="a", preload=("b",), max_loaded_models=2, home=tmp_path)

    async def scenario() -> None:
        res = residency.Residency(config)
        await res.preload()
        assert sorted(res.residents) == ["a:latest", "b:latest"]
        lease_c = await res.acquire("c:latest", keep_alive=0.2)
        assert FakeServed.unloads == ["a"]  # the LRU one alone, though its unload is slow
        assert sorted(res.residents) == ["b:latest", "c:latest"]
        lease_b = await res.acquire("b:latest")
        waiting = asyncio.ensure_future(res.acquire("d:latest"))
        await asyncio.sleep(0.4)
        assert not waiting.done() and res.num_waiting == 1  # both loaded models are busy
        lease_c.release()  # c's keep-alive is 0.2 s, b is kept: c goes
        lease_d = await asyncio.wait_for(waiting, 5)
        assert FakeServed.unloads == ["a", "c:latest"]
        assert sorted(res.residents) == ["b:latest", "d:latest"]
        lease_d.release()
        lease_b.release()
        await res.shutdown()

    asyncio.run(scenario())
