"""Loading from an S3-compatible server (moto, on loopback), a plain HTTP server with Range
requests, and the Hugging Face Hub layout (served on loopback through HF_ENDPOINT): the same
logits as from the local directory, with clear errors for missing or denied credentials."""

from __future__ import annotations

import shutil
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import torch
from moto.server import ThreadedMotoServer

from ember.errors import ModelLoadError
from ember.loader import StreamOptions, resolve_source, workers
from ember.loader.cache import MARKER, cache_path
from ember.loader.remote import _first_line
from ember.models import CausalLM, load_model

from .helpers import RangeServer, prefill_logits, serve_http, tiny_llama

CPU = torch.device("cpu")
BUCKET = "ember-test"
TOKENS = [3, 17, 99, 42, 7, 120, 5]
SMALL = StreamOptions(chunk_bytes=16 * 1024, threads=4)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-sharded")
    tiny_llama(path, seed=3, max_shard_size="60KB")
    assert (path / "model.safetensors.index.json").is_file()
    return path


@pytest.fixture(scope="module")
def local_logits(model_dir: Path) -> torch.Tensor:
    return prefill_logits(load_model(model_dir, torch.float32, CPU), TOKENS)


def _same_model(model: CausalLM, local_logits: torch.Tensor) -> None:
    torch.testing.assert_close(prefill_logits(model, TOKENS), local_logits, atol=0, rtol=0)


@pytest.fixture(autouse=True)
def _no_cloud_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may reach a real credential source or metadata server: only loopback."""
    for var in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_METADATA_ENDPOINT", f"http://127.0.0.1:{_dead_port()}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-hf-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


# --- S3 -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint(model_dir: Path) -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"  # type: ignore[union-attr]
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    for file in sorted(model_dir.iterdir()):
        client.put_object(Bucket=BUCKET, Key=f"models/tiny/{file.name}", Body=file.read_bytes())
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, s3_endpoint: str) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    return s3_endpoint


def test_s3_loads_the_same_model(s3_env: str, local_logits: torch.Tensor) -> None:
    seen: list[int] = []
    model = load_model(
        f"s3://{BUCKET}/models/tiny",
        torch.float32,
        CPU,
        progress=lambda done, total: seen.append(done),
        options=SMALL,
    )
    _same_model(model, local_logits)
    assert seen == sorted(seen) and seen[-1] > 0


def test_s3_write_through_cache_serves_the_next_start(
    s3_env: str, local_logits: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"s3://{BUCKET}/models/tiny"
    cache = tmp_path / "cache"
    _same_model(load_model(uri, torch.float32, CPU, cache_dir=cache, options=SMALL), local_logits)
    copy = cache_path(cache, uri)
    assert (copy / MARKER).is_file()
    assert (copy / "config.json").is_file() and not list(copy.glob("*.partial"))
    # The server is gone: the next start reads the local copy.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_dead_port()}")
    assert resolve_source(uri, cache).local_dir() == copy
    _same_model(load_model(uri, torch.float32, CPU, cache_dir=cache), local_logits)


def test_a_failed_load_leaves_no_partial_copy_in_the_cache(model_dir: Path, tmp_path: Path) -> None:
    """A shard cut short at the source fails the load, and the write-through copies it had
    begun (allocated at the remote files' full size) are removed, not left to fill the disk."""
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    shard = sorted(broken.glob("*.safetensors"))[-1]
    with shard.open("r+b") as f:
        f.truncate(shard.stat().st_size - 100)
    cache = tmp_path / "cache"
    with serve_http(RangeServer(broken, prefix="/files/broken")) as server:
        url = f"http://127.0.0.1:{server.port}/files/broken"
        with pytest.raises(ModelLoadError, match="truncated"):
            load_model(url, torch.float32, CPU, cache_dir=cache, options=SMALL)
    copy = cache_path(cache, url)
    assert not list(copy.rglob("*.partial")), list(copy.rglob("*"))
    assert not (copy / MARKER).exists()


def test_s3_missing_prefix(s3_env: str) -> None:
    with pytest.raises(
        ModelLoadError, match=r"no config\.json in 's3://ember-test/models/nothing'"
    ):
        load_model(f"s3://{BUCKET}/models/nothing", torch.float32, CPU)


def test_s3_missing_bucket_is_named_as_such(s3_env: str) -> None:
    """A bucket that does not exist is said to be missing, in one line: not as a missing
    config.json, nor as the server's XML error document."""
    for uri in ("s3://no-such-bucket/models/tiny", "s3://no-such-bucket"):
        with pytest.raises(ModelLoadError) as info:
            load_model(uri, torch.float32, CPU)
        message = str(info.value)
        assert message.startswith(f"the bucket of '{uri}' does not exist"), message
        assert "AWS_ENDPOINT_URL" in message and "<" not in message and "\n" not in message


def test_a_service_error_document_is_read_not_dumped() -> None:
    """Where obstore's first line ends in an XML error's opening, the error's code and message
    stand in for it."""
    error = RuntimeError(
        "Generic S3 error: GET http://h/b?list-type=2 - Server returned non-2xx status code: "
        '403 Forbidden: <?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied'
        "</Code><Message>Access Denied</Message></Error>\n\nDebug source:\nGeneric {...}"
    )
    assert _first_line(error) == (
        "Generic S3 error: GET http://h/b?list-type=2 - Server returned non-2xx status code: "
        "403 Forbidden: AccessDenied (Access Denied)"
    )
    assert _first_line(RuntimeError("plain\nrest")) == "plain"
    assert _first_line(RuntimeError("")) == "RuntimeError"


def test_s3_http_endpoint_needs_allow_http(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    with pytest.raises(ModelLoadError, match=r"plain HTTP; set AWS_ALLOW_HTTP=true"):
        load_model(f"s3://{BUCKET}/models/tiny", torch.float32, CPU)


def test_s3_denied_credentials_say_what_to_set(s3_env: str) -> None:
    _moto_auth(s3_env, "0")  # from now on moto checks keys, and "test" is no IAM user's key
    try:
        with pytest.raises(
            ModelLoadError, match=r"access to 's3://.*' was denied.*AWS_ACCESS_KEY_ID"
        ):
            load_model(f"s3://{BUCKET}/models/tiny", torch.float32, CPU)
    finally:
        _moto_auth(s3_env, "inf")


def test_s3_missing_credentials_say_what_to_set(
    s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(
        ModelLoadError, match=r"cannot authenticate to 's3://.*AWS_ACCESS_KEY_ID"
    ) as info:
        load_model(f"s3://{BUCKET}/models/tiny", torch.float32, CPU)
    assert "127.0.0.1" in str(info.value)  # the instance-role lookup went to the loopback stand-in


def _moto_auth(endpoint: str, count: str) -> None:
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=count.encode(),
        headers={"Content-Type": "text/plain"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


# --- HTTP and the Hugging Face layout -------------------------------------------------------


def test_http_range_requests_load_the_same_model(
    model_dir: Path, local_logits: torch.Tensor
) -> None:
    with serve_http(RangeServer(model_dir, prefix="/files/tiny")) as server:
        url = f"http://127.0.0.1:{server.port}/files/tiny"
        model = load_model(url, torch.float32, CPU, options=SMALL)
    _same_model(model, local_logits)
    gets = [r for r in server.requests if r.startswith("GET") and ".safetensors " in r]
    assert gets and all("bytes=" in r for r in gets)  # ranges, never whole files


def test_early_reads_fill_the_ring_while_the_model_is_built(
    model_dir: Path, local_logits: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EMBER_EARLY_READS=1: range GETs for the weights go out while the model is still being
    built, and the model is the same; a build that fails stops them (no reader left)."""
    import threading
    import time

    import ember.models.loader as loader_module
    from ember.loader.streamer import SafetensorsStreamer

    monkeypatch.setenv("EMBER_EARLY_READS", "1")
    monkeypatch.setenv("EMBER_LOAD_TAPER", "1")
    build = loader_module.build_model
    seen: dict[str, int] = {}
    begin = SafetensorsStreamer.start

    def start(self: SafetensorsStreamer) -> None:
        seen["before"] = len(server.requests)
        begin(self)

    def slow_build(*args: object, **kwargs: object) -> CausalLM:
        time.sleep(0.3)
        seen["during"] = len(server.requests)
        if seen.get("fail"):
            raise RuntimeError("out of memory while building")
        return build(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(SafetensorsStreamer, "start", start)
    monkeypatch.setattr(loader_module, "build_model", slow_build)
    with serve_http(RangeServer(model_dir, prefix="/files/tiny")) as server:
        url = f"http://127.0.0.1:{server.port}/files/tiny"
        model = load_model(url, torch.float32, CPU, options=SMALL)
        _same_model(model, local_logits)
        assert seen["during"] > seen["before"]  # weights were being read during the build
        seen["fail"] = 1
        with pytest.raises(RuntimeError, match="out of memory while building"):
            load_model(url, torch.float32, CPU, options=SMALL)
    assert not [t for t in threading.enumerate() if t.name.startswith("ember-load")]
    assert workers.readers.busy() == 0  # the kept reader threads are all idle again


def test_an_http_server_without_range_requests_is_named_as_the_problem(model_dir: Path) -> None:
    """Python's http.server ignores Range and sends whole files: the error says so and what to
    do, instead of the HTTP client's own words."""
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(model_dir), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}"
        with pytest.raises(ModelLoadError, match="does not answer HTTP range requests"):
            load_model(url, torch.float32, CPU, options=SMALL)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("key", ["missing", "not-a-key"])
def test_a_bad_google_credentials_file_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    """GOOGLE_APPLICATION_CREDENTIALS naming no file, or a file that is no key: one line that
    names the variable or the problem and what to set, not the client's debug dump."""
    path = tmp_path / "key.json"
    if key == "not-a-key":
        path.write_text("{}")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    with pytest.raises(ModelLoadError) as caught:
        load_model("gs://some-bucket/models/tiny", torch.float32, CPU)
    message = str(caught.value)
    assert "cannot open 'gs://some-bucket/models/tiny'" in message
    assert "GOOGLE_APPLICATION_CREDENTIALS" in message and "Debug" not in message
    assert "\n" not in message


def test_http_missing_model(model_dir: Path) -> None:
    with serve_http(RangeServer(model_dir)) as server:
        url = f"http://127.0.0.1:{server.port}/elsewhere"
        with pytest.raises(ModelLoadError, match=r"no config\.json in 'http://127\.0\.0\.1"):
            load_model(url, torch.float32, CPU)


def test_hf_hub_with_token(
    model_dir: Path, local_logits: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = RangeServer(model_dir, token="hf_secret", prefix="/org/tiny/resolve/v1.0")
    with serve_http(server):
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.port}")
        with pytest.raises(ModelLoadError, match=r"'hf://org/tiny@v1\.0.*HF_TOKEN"):
            load_model("hf://org/tiny@v1.0", torch.float32, CPU)
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        model = load_model("hf://org/tiny@v1.0", torch.float32, CPU, options=SMALL)
    _same_model(model, local_logits)


def test_hf_cache_snapshot_is_read_locally(
    model_dir: Path, local_logits: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf-cache" / "models--org--tiny"
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_dead_port()}")  # no network needed
    assert resolve_source("hf://org/tiny").local_dir() == repo / "snapshots" / commit
    _same_model(load_model("hf://org/tiny", torch.float32, CPU), local_logits)


def test_hf_bad_name() -> None:
    with pytest.raises(ModelLoadError, match=r"write hf://org/name or hf://org/name@revision"):
        load_model("hf://just-a-name", torch.float32, CPU)
