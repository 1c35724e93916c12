"""Ollama's store routes through the official `ollama` client and raw HTTP: tags, copy, delete,
create (from a model, a folder or uploaded blobs), blobs, pull (streamed progress), push (501),
and `ember ps` / `ember list` against the running server's store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from serverproc import COMMON_ARGS, Server, start

from ember.registry import ModelStore

# Paths in requests are the store's own business here (create from a folder, pull from one).
ARGS = ("--kv-cache-memory-gb", "0.02", "--allow-model-paths", *COMMON_ARGS)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store-home")


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    s = start(home, "server", "tiny", *ARGS, env={"EMBER_HOME": str(home)})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=60)


@pytest.fixture(scope="module")
def tiny_dir(home: Path) -> Path:
    return ModelStore(home).resolve("tiny").path


def names(client: ollama.Client) -> list[str]:
    return [m.model or "" for m in client.list().models]


def test_tags_details(client: ollama.Client) -> None:
    (tiny,) = [m for m in client.list().models if m.model == "tiny:latest"]
    assert tiny.digest is not None and len(tiny.digest) == 64
    assert tiny.size and tiny.modified_at is not None
    d = tiny.details
    assert d is not None and d.family == "llama" and d.families == ["llama"]
    assert d.format == "safetensors" and d.parameter_size == "227K"


def test_copy_and_delete(client: ollama.Client, server: Server) -> None:
    before = next(m for m in client.list().models if m.model == "tiny:latest")
    client.copy("tiny", "twin:v2")
    after = next(m for m in client.list().models if m.model == "tiny:latest")
    assert (after.digest, after.modified_at) == (before.digest, before.modified_at)
    models = {m.model: m.digest for m in client.list().models}
    assert models["twin:v2"] == models["tiny:latest"]  # one ID, shared blobs
    client.delete("twin:v2")
    assert "twin:v2" not in names(client)
    r = httpx.request("DELETE", server.url + "/api/delete", json={"model": "twin:v2"})
    assert r.status_code == 404 and "not found" in r.json()["error"]
    r = httpx.post(server.url + "/api/copy", json={"source": "nope", "destination": "x"})
    assert r.status_code == 404


def test_create_from_a_model_with_system_and_parameters(client: ollama.Client) -> None:
    steps = list(
        client.create(
            model="mario",
            from_="tiny",
            system="You are Mario.",
            parameters={"num_predict": 3},
            stream=True,
        )
    )
    assert steps[-1].status == "success"
    assert "mario:latest" in names(client)
    r = client.generate(model="mario", prompt="hi", options={"temperature": 0})
    assert r.done and r.eval_count is not None and r.eval_count <= 3
    assert client.create(model="mario2", from_="mario").status == "success"


def test_create_from_a_folder(client: ollama.Client, tiny_dir: Path) -> None:
    assert client.create(model="fromdir", from_=str(tiny_dir)).status == "success"
    assert "fromdir:latest" in names(client)


def test_blobs_and_create_from_files(client: ollama.Client, server: Server, tiny_dir: Path) -> None:
    digest = "sha256:" + "0" * 64
    assert httpx.head(f"{server.url}/api/blobs/{digest}").status_code == 404
    files = {p.name: client.create_blob(p) for p in sorted(tiny_dir.iterdir()) if p.is_file()}
    for d in files.values():
        assert httpx.head(f"{server.url}/api/blobs/{d}").status_code == 200
    assert client.create(model="uploaded", files=files).status == "success"
    r = client.generate(model="uploaded", prompt="hi", options={"num_predict": 2})
    assert r.done
    bad = httpx.post(f"{server.url}/api/blobs/{digest}", content=b"not these bytes")
    assert bad.status_code == 400 and "digest mismatch" in bad.json()["error"]
    assert httpx.head(f"{server.url}/api/blobs/sha256:xyz").status_code == 400


def test_create_errors(server: Server) -> None:
    r = httpx.post(server.url + "/api/create", json={"model": "x", "from": "nope", "stream": False})
    assert r.status_code == 404
    r = httpx.post(
        server.url + "/api/create", json={"model": "x", "quantize": "q4_K_M", "from": "tiny"}
    )
    assert r.status_code == 400 and "quantize" in r.json()["error"]


def test_pull_streams_progress_from_a_source(server: Server, tiny_dir: Path) -> None:
    body = {"model": "pulled:v1", "source": str(tiny_dir)}
    with httpx.stream("POST", server.url + "/api/pull", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[0] == {"status": "pulling manifest"}
    weights = [x for x in lines if x.get("digest") == "model.safetensors"]
    assert weights and weights[-1]["completed"] == weights[-1]["total"] > 0
    assert lines[-1] == {"status": "success"}
    assert "pulled:v1" in [m["model"] for m in httpx.get(server.url + "/api/tags").json()["models"]]


def test_pull_of_a_present_model_succeeds_and_an_unknown_one_is_404(
    client: ollama.Client,
) -> None:
    assert client.pull("tiny").status == "success"
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("nope")
    assert "not found" in e.value.error and "source" in e.value.error


def test_push_is_501(server: Server) -> None:
    r = httpx.post(server.url + "/api/push", json={"model": "tiny"})
    assert r.status_code == 501 and "no model registry" in r.json()["error"]
    logged = [line for line in server.log().splitlines() if "/api/push" in line]
    assert logged and not any("ERROR" in line for line in logged)


def test_cli_ps_and_list_read_the_server_and_store(server: Server, home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "EMBER_"))}
    env |= {"OLLAMA_HOST": server.url, "EMBER_HOME": str(home)}

    def ember(*args: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "ember.cli", *args], env=env, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    ps = ember("ps").splitlines()
    assert ps[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    assert any(line.startswith("tiny:latest") and "100% CPU" in line for line in ps[1:])
    listed = ember("list").splitlines()
    assert listed[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert any(line.startswith("tiny:latest") for line in listed)


def test_create_from_a_legacy_modelfile(server: Server, client: ollama.Client) -> None:
    body = {"model": "luigi", "modelfile": 'FROM tiny\nSYSTEM "You are Luigi."', "stream": False}
    r = httpx.post(server.url + "/api/create", json=body, timeout=60)
    assert r.status_code == 200 and r.json() == {"status": "success"}
    assert "luigi:latest" in names(client)


def test_blob_uploads_are_not_bound_by_the_body_limit(server: Server) -> None:
    import hashlib

    data = bytes(range(256)) * (9 * 4096)  # 9 MiB, over the default 8 MiB request limit
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = httpx.post(f"{server.url}/api/blobs/{digest}", content=data, timeout=60)
    assert r.status_code in (200, 201), r.text
    assert httpx.head(f"{server.url}/api/blobs/{digest}").status_code == 200
    too_big = httpx.post(f"{server.url}/api/generate", content=b"x" * (9 * 2**20), timeout=60)
    assert too_big.status_code == 413


def test_delete_leaves_uploads_for_a_later_create_alone(
    client: ollama.Client, server: Server, tmp_path: Path
) -> None:
    upload = tmp_path / "config.json"
    upload.write_text('{"uploaded": "before an unrelated delete"}')
    digest = client.create_blob(upload)
    client.copy("tiny", "scratch")
    client.delete("scratch")
    assert httpx.head(f"{server.url}/api/blobs/{digest}").status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"template": "{{ .Prompt }}"},
        {"modelfile": 'FROM tiny\nTEMPLATE """{{ if .System }}{{ .System }}{{ end }}"""'},
    ],
)
def test_create_with_a_go_template_is_400_and_creates_nothing(
    client: ollama.Client, server: Server, body: dict[str, str]
) -> None:
    body = {"model": "gotmpl", "from": "tiny", "stream": False, **body}
    r = httpx.post(server.url + "/api/create", json=body, timeout=60)
    assert r.status_code == 400
    assert "Jinja chat templates" in r.json()["error"] and "Go template" in r.json()["error"]
    assert "gotmpl:latest" not in names(client)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"parameters": {"temperature": "hot"}}, "temperature"),
        ({"parameters": {"bogus": 1}}, "bogus"),
        ({"parameters": {"top_p": 7}}, "top_p"),
        ({"modelfile": "FROM tiny\nPARAMETER num_predict lots"}, "num_predict"),
    ],
)
def test_create_with_bad_parameters_is_400_naming_them(
    client: ollama.Client, server: Server, body: dict[str, Any], needle: str
) -> None:
    body = {"model": "badparams", "from": "tiny", "stream": False, **body}
    r = httpx.post(server.url + "/api/create", json=body, timeout=60)
    assert r.status_code == 400 and needle in r.json()["error"]
    assert "badparams:latest" not in names(client)


def test_empty_system_means_the_models_system(client: ollama.Client, server: Server) -> None:
    client.create(model="peach", from_="tiny", system="You are Princess Peach.")
    body = {"model": "peach", "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
    default = httpx.post(server.url + "/api/generate", json=body, timeout=60).json()
    empty = httpx.post(server.url + "/api/generate", json={**body, "system": ""}, timeout=60)
    assert empty.json()["prompt_eval_count"] == default["prompt_eval_count"]


def test_show_modelfile_has_template_and_system(client: ollama.Client) -> None:
    client.create(model="daisy", from_="tiny", system="You are Daisy.", parameters={"stop": ["x"]})
    shown = client.show("daisy")
    modelfile = shown.modelfile or ""
    assert 'SYSTEM """You are Daisy."""' in modelfile
    assert f'TEMPLATE """{shown.template}"""' in modelfile and shown.template
    assert 'PARAMETER stop "x"' in modelfile
