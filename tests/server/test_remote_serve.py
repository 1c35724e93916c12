"""`ember serve URI`: the config and tokenizer fetched, the weights streamed from an S3-compatible
server (moto) or an HTTP range server on loopback; /health reports load progress and then the
start-up phases; an unreadable source makes the server exit non-zero with a message that says
what to set. And `ember pull` into the store, then `ember serve NAME`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from serverproc import COMMON_ARGS, Server, wait_for

from ember.config import ServeConfig
from ember.registry import ModelStore
from ember.server.served_model import ServedModel
from tests.loader.helpers import RangeServer, serve_http
from tests.loader.s3server import S3Server, dead_port, serve_s3

PHASES = ("imports", "resolve", "cuda_init", "weights", "kv_cache", "graph_capture", "warmup")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ModelStore(tmp_path_factory.mktemp("home")).resolve("tiny").path


@pytest.fixture(scope="module")
def s3(tiny_dir: Path) -> Iterator[tuple[S3Server, str]]:
    with serve_s3() as server:
        yield server, server.upload(tiny_dir, "models/tiny-remote")


@pytest.fixture(autouse=True)
def _no_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers inherit this environment: only the variables a test sets reach them."""
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)


def serve(tmp: Path, name: str, model: str, env: dict[str, str]) -> Server:
    return Server(tmp / f"{name}.log", model, *COMMON_ARGS, "--home", str(tmp / "home"), env=env)


def generate(server: Server, model: str) -> dict[str, Any]:
    r = httpx.post(
        server.url + "/api/generate",
        json={"model": model, "prompt": "Hello", "stream": False, "options": {"num_predict": 4}},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_serve_s3_answers_and_caches_for_the_next_start(
    s3: tuple[S3Server, str], tmp_path: Path
) -> None:
    s3_server, uri = s3
    server = serve(tmp_path, "s3", uri, s3_server.env(tmp_path))
    try:
        server.wait_healthy()
        assert generate(server, "tiny-remote")["eval_count"] == 4
        assert (
            httpx.get(server.url + "/api/tags").json()["models"][0]["name"] == "tiny-remote:latest"
        )
    finally:
        server.stop()
    cached = tmp_path / "home" / "cache" / "s3" / s3_server.bucket / "models" / "tiny-remote"
    assert (cached / ".ember-cache.json").is_file() and (cached / "model.safetensors").is_file()

    # The bucket is out of reach now: the next start reads the written-through copy.
    offline = s3_server.env(tmp_path) | {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{dead_port()}"}
    again = serve(tmp_path, "s3-cached", uri, offline)
    try:
        again.wait_healthy()
        assert generate(again, "tiny-remote")["done"]
    finally:
        again.stop()


def test_health_reports_load_progress_then_startup_phases(tiny_dir: Path, tmp_path: Path) -> None:
    slow = RangeServer(tiny_dir, prefix="/models/tiny-http", delay_s=0.4)
    with serve_http(slow):
        server = serve(tmp_path, "http", f"http://127.0.0.1:{slow.port}/models/tiny-http", {})
        loading: list[dict[str, Any]] = []
        try:
            while True:
                try:
                    r = httpx.get(server.url + "/health", timeout=5)
                except httpx.HTTPError:
                    assert server.proc.poll() is None, server.log()
                    continue
                if r.status_code == 200:
                    ready = r.json()
                    break
                assert r.status_code == 503
                loading.append(r.json())
            metrics = server.metrics()
            head = httpx.head(server.url + "/metrics", timeout=5)
            generate(server, "tiny-http")
        finally:
            server.stop()
    for body in loading:
        assert body["status"] == "loading"
        assert {"phase", "bytes_done", "bytes_total", "elapsed_s"} <= body.keys()
    streaming = [b for b in loading if b["phase"] == "loading weights" and b["bytes_total"]]
    assert streaming, loading
    # the phases come in start-up order ("loading weights" once the engine is at them)
    seen = [b["phase"] for b in loading]
    assert [p for p in START_ORDER if p in seen] == list(dict.fromkeys(seen)), seen
    total = streaming[0]["bytes_total"]
    assert any(b["bytes_done"] < total for b in streaming)
    startup = ready["startup"]
    assert startup["weights_bytes"] == total
    assert all(startup[f"{p}_s"] >= 0 for p in PHASES)
    assert startup["total_s"] >= startup["weights_s"] > 0.4  # at least the delayed range read
    assert metrics["ember:startup_phase_seconds"] > 0
    assert metrics["ember:weights_bytes"] == 2 * total  # loaded, and in all
    assert head.status_code == 200 and head.headers["content-type"].startswith("text/plain")


def test_no_cache_weights_streams_without_a_local_copy(tiny_dir: Path, tmp_path: Path) -> None:
    """--no-cache-weights (EMBER_CACHE_WEIGHTS=false): the weights stream into the model and
    nothing of them is written to disk (on Cloud Run the disk is the instance's memory)."""
    with serve_http(RangeServer(tiny_dir, prefix="/models/tiny-nocache")) as web:
        uri = f"http://127.0.0.1:{web.port}/models/tiny-nocache"
        server = serve(tmp_path, "nocache", uri, {"EMBER_CACHE_WEIGHTS": "false"})
        try:
            server.wait_healthy()
            assert generate(server, "tiny-nocache")["eval_count"] == 4
        finally:
            server.stop()
    cache = tmp_path / "home" / "cache"
    assert not list(cache.rglob("*.safetensors")), list(cache.rglob("*"))
    assert list(cache.rglob("config.json"))  # the small files are still fetched there


def _slow_weights(tiny_dir: Path, name: str, seconds: float) -> RangeServer:
    """An HTTP source whose weights take `seconds` to arrive (its small files come at once)."""
    weights = (tiny_dir / "model.safetensors").stat().st_size
    return RangeServer(tiny_dir, prefix=f"/models/{name}", rate_bps=weights / seconds)


def _wait_phase(server: Server, phase: str) -> None:
    def there() -> bool:
        try:
            return httpx.get(server.url + "/health", timeout=5).json().get("phase") == phase
        except httpx.HTTPError:
            return False

    assert wait_for(there, timeout=60), server.log()


START_ORDER = [
    "starting",
    "importing the engine",
    "fetching model files",
    "starting the engine",
    "initialising CUDA",
    "loading weights",
    "allocating KV cache",
    "capturing CUDA graphs",
    "warming up",
]


@contextmanager
def _loading(
    tiny_dir: Path, tmp_path: Path, name: str, seconds: float, *args: str
) -> Iterator[tuple[str, Server]]:
    """`ember serve` of a URI whose weights take `seconds`, from the moment it loads them:
    (the URI, the server); the server is stopped after."""
    with serve_http(_slow_weights(tiny_dir, name, seconds)) as web:
        uri = f"http://127.0.0.1:{web.port}/models/{name}"
        home = str(tmp_path / "home")
        env = {"EMBER_CACHE_WEIGHTS": "false"}
        server = Server(tmp_path / f"{name}.log", uri, *COMMON_ARGS, "--home", home, *args, env=env)
        try:
            _wait_phase(server, "loading weights")
            yield uri, server
        finally:
            server.stop()


class _Waiting(threading.Thread):
    """One request sent while the model loads: (status, body) once answered."""

    def __init__(self, server: Server, path: str, body: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.url, self.body = server.url + path, body
        self.answer: tuple[int, dict[str, Any]] | None = None
        self.seconds = 0.0

    def run(self) -> None:
        t0 = time.monotonic()
        r = httpx.post(self.url, json=self.body, timeout=120)
        self.seconds = time.monotonic() - t0
        self.answer = (r.status_code, r.json())


def test_a_server_stopped_while_loading_exits_at_once_and_answers_its_waiting_requests(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM in the middle of a slow load: requests waiting for the model get the drain's
    503 at its deadline (not a cut connection or a 500), and the process exits 0 without
    waiting for the rest of the load (a platform would kill it at its grace period)."""
    with _loading(tiny_dir, tmp_path, "tiny-slow", 120, "--drain-timeout", "1") as (uri, server):
        waiting = [
            _Waiting(server, "/api/generate", {"model": "tiny-slow", "prompt": "hi"}),
            _Waiting(server, "/v1/completions", {"model": uri, "prompt": "hi"}),
        ]
        for request in waiting:
            request.start()
        assert wait_for(lambda: server.metrics()["vllm:num_requests_waiting"] == 2)
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=20) == 0, server.log()
        assert time.monotonic() - t0 < 10
    for request in waiting:
        request.join(timeout=10)
        assert request.answer is not None
        status, body = request.answer
        assert status == 503, body
        assert "shutting down" in json.dumps(body)
    assert "exiting without waiting for the load" in server.log()


def test_the_request_timeout_counts_the_wait_for_the_model(tiny_dir: Path, tmp_path: Path) -> None:
    with _loading(tiny_dir, tmp_path, "tiny-slower", 60, "--request-timeout", "1") as (_, server):
        request = _Waiting(server, "/api/chat", {"model": "tiny-slower", "messages": []})
        request.run()
    assert request.answer is not None
    status, body = request.answer
    assert status == 504 and "--request-timeout" in body["error"], body
    assert request.seconds < 10


def test_a_model_whose_requests_all_gave_up_while_it_loaded_is_unloaded_once_loaded(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """An on-demand load whose only request timed out: with keep-alive 0 the model is unloaded,
    but only once its load has ended (an unload during the load stopped no engine, and the one
    the load then made ran on, owned by nobody)."""
    with serve_http(_slow_weights(tiny_dir, "tiny-gaveup", seconds=3)) as web:
        uri = f"http://127.0.0.1:{web.port}/models/tiny-gaveup"
        server = Server(
            tmp_path / "gaveup.log", "tiny", *COMMON_ARGS, "--home", str(tmp_path / "home"),
            "--keep-alive", "0", "--request-timeout", "1", "--allow-model-paths",
            "--max-loaded-models", "2", env={"EMBER_CACHE_WEIGHTS": "false"},
        )  # fmt: skip
        try:
            server.wait_healthy()
            r = httpx.post(server.url + "/api/generate", json={"model": uri, "prompt": "hi"})
            assert r.status_code == 504, r.text
            assert wait_for(lambda: "unloading model tiny-gaveup" in server.log(), timeout=30)
            log = server.log()
            ps = httpx.get(server.url + "/api/ps", timeout=5).json()["models"]
        finally:
            server.stop()
    assert log.index("model tiny-gaveup:latest ready") < log.index("unloading model tiny-gaveup")
    assert [m["name"] for m in ps] == ["tiny:latest"]


def test_a_uri_model_answers_to_its_name_and_keeps_its_label_from_the_start(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """Served by URI, the model is "tiny-named:latest" from the first moment: a request naming
    it while the files are still being fetched waits for the load (no 404), and /metrics labels
    every series with that name before and after the load (no stale series under the URI)."""
    slow = RangeServer(tiny_dir, prefix="/models/tiny-named", delay_s=0.3)
    with serve_http(slow):
        uri = f"http://127.0.0.1:{slow.port}/models/tiny-named"
        server = serve(tmp_path, "named", uri, {})
        try:
            server.wait_live()
            early = httpx.get(server.url + "/metrics", timeout=5).text
            assert httpx.get(server.url + "/health", timeout=5).json()["status"] == "loading"
            assert generate(server, "tiny-named")["model"] == "tiny-named"
            late = httpx.get(server.url + "/metrics", timeout=5).text
        finally:
            server.stop()
    for text in (early, late):
        labels = set(re.findall(r'model_name="([^"]*)"', text))
        assert labels == {"tiny-named:latest"}, labels


@pytest.mark.parametrize(
    ("bucket", "credentials", "message"),
    [
        ("no-such-bucket", True, "the bucket of 's3://no-such-bucket/models/tiny-remote' does not"),
        (None, False, "cannot authenticate to 's3://ember-models/models/tiny-remote'"),
    ],
    ids=["unknown-bucket", "no-credentials"],
)
def test_unreadable_source_exits_nonzero_with_the_reason(
    s3: tuple[S3Server, str],
    tmp_path: Path,
    bucket: str | None,
    credentials: bool,
    message: str,
) -> None:
    s3_server, uri = s3
    if bucket is not None:
        uri = uri.replace(s3_server.bucket, bucket)
    server = serve(tmp_path, "bad", uri, s3_server.env(tmp_path, credentials=credentials))
    try:
        code = server.proc.wait(timeout=90)
    finally:
        server.stop()
    assert code == 1
    log = server.log()
    assert message in log
    if not credentials:
        assert "set AWS_ACCESS_KEY_ID" in log


def test_health_shows_the_load_error(
    s3: tuple[S3Server, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_server, uri = s3
    for key, value in s3_server.env(tmp_path).items():
        monkeypatch.setenv(key, value)
    served = ServedModel(ServeConfig(model=uri + "-missing", home=tmp_path / "home"))
    asyncio.run(served.load())
    status, body = served.health()
    assert status == 503 and body["status"] == "failed"
    assert "no config.json in 's3://ember-models/models/tiny-remote-missing'" in body["error"]


def test_pull_then_serve_by_name(s3: tuple[S3Server, str], tmp_path: Path) -> None:
    s3_server, uri = s3
    home = tmp_path / "home"
    env = {**os.environ, **s3_server.env(tmp_path)}
    pulled = subprocess.run(
        [sys.executable, "-m", "ember.cli", "pull", uri, "pulled:v1", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert pulled.returncode == 0, pulled.stderr
    assert "model.safetensors: done" in pulled.stderr
    assert "computed sha256 is recorded in" in pulled.stdout
    assert (home / "models" / "pulled" / "v1" / "model.safetensors").is_file()

    # Served from the store: S3 need not be reachable any more.
    offline = s3_server.env(tmp_path) | {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{dead_port()}"}
    server = serve(tmp_path, "pulled", "pulled:v1", offline)
    try:
        server.wait_healthy()
        assert generate(server, "pulled:v1")["model"] == "pulled:v1"
    finally:
        server.stop()
