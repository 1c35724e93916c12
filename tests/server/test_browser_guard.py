"""What a web page, or a client naming server paths, cannot make a default server do: a
request with a foreign Origin is refused before it runs (CORS alone only hides the answer), a
loopback server answers only local Host names (DNS rebinding), and requests name models from
the store, not server folders or URIs (which would copy folders into the store or fetch from
hosts inside the network with the server's credentials)."""

from __future__ import annotations

import httpx
import pytest

from ember.server.browser_guard import is_local_name


def test_a_foreign_origin_is_refused_before_the_route_runs(base_url: str) -> None:
    body = {"source": "tiny", "destination": "csrf-made"}
    headers = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    r = httpx.post(base_url + "/api/copy", json=body, headers=headers)
    assert r.status_code == 403 and "--origins" in r.json()["error"]
    names = [m["model"] for m in httpx.get(base_url + "/api/tags").json()["models"]]
    assert "csrf-made:latest" not in names
    r = httpx.post(
        base_url + "/v1/completions",
        json={"model": "tiny", "prompt": "hi", "max_tokens": 1},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403 and r.json()["error"]["type"]
    local = {"Origin": "http://localhost:3000"}
    r = httpx.post(base_url + "/api/show", json={"model": "tiny"}, headers=local)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == local["Origin"]


def test_a_loopback_server_answers_only_local_host_names(base_url: str) -> None:
    assert (
        httpx.get(base_url + "/api/tags", headers={"Host": "attacker.example"}).status_code == 403
    )
    for host in ("localhost:11434", "127.0.0.1", "[::1]:8080", "10.0.0.5", "box.local"):
        assert httpx.get(base_url + "/api/tags", headers={"Host": host}).status_code == 200, host


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/create", {"model": "stolen", "from": "/etc", "stream": False}),
        ("/api/create", {"model": "stolen", "modelfile": "FROM /etc", "stream": False}),
        ("/api/pull", {"model": "http://127.0.0.1:9/internal", "stream": False}),
        ("/api/pull", {"model": "x", "source": "s3://bucket/model", "stream": False}),
        ("/api/copy", {"source": "/etc", "destination": "copied"}),
        ("/api/show", {"model": "file:///etc"}),
        ("/api/generate", {"model": "~/models/x", "prompt": "hi", "stream": False}),
        ("/v1/completions", {"model": "gs://bucket/model", "prompt": "hi"}),
    ],
)
def test_requests_name_store_models_only_by_default(base_url: str, path: str, body: dict) -> None:  # type: ignore[type-arg]
    r = httpx.post(base_url + path, json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert "--allow-model-paths" in r.text


def test_local_names() -> None:
    for host in ("localhost", "LOCALHOST:80", "app.localhost", "127.0.0.2", "[::1]", "192.168.1.9"):
        assert is_local_name(host), host
    for host in ("attacker.example", "example.com:11434", "8.8.8.8", "localhost.evil.com"):
        assert not is_local_name(host), host
