"""`ember pull`: a model copied from an HTTP range server and from S3 (moto) on loopback into the
store, byte for byte; an interrupted pull continues its .part with range reads; sha256 checked
against the source's digest files where it has them, and recorded either way."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.errors import ConflictError, ModelLoadError, ModelNotFoundError
from ember.registry import ModelStore
from ember.registry.pull import PART, RECORD, pull
from tests.loader.helpers import RangeServer, serve_http
from tests.loader.s3server import serve_s3

CHUNK = 64 * 1024
WEIGHTS = "model.safetensors"


class Interrupted(Exception):
    pass


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ModelStore(tmp_path_factory.mktemp("home")).resolve("tiny").path


@pytest.fixture
def http_tiny(tiny_dir: Path) -> Iterator[tuple[RangeServer, str]]:
    with serve_http(RangeServer(tiny_dir, prefix="/files/tiny")) as server:
        yield server, f"http://127.0.0.1:{server.port}/files/tiny"


def assert_same_files(pulled: Path, source: Path) -> None:
    names = sorted(p.name for p in source.iterdir())
    assert sorted(p.name for p in pulled.iterdir() if not p.name.startswith(".")) == names
    for name in names:
        assert (pulled / name).read_bytes() == (source / name).read_bytes(), name


def record(path: Path) -> dict[str, dict[str, object]]:
    files: dict[str, dict[str, object]] = json.loads((path / RECORD).read_text())["files"]
    return files


def test_pull_from_http_records_sha256(
    http_tiny: tuple[RangeServer, str], tiny_dir: Path, store: ModelStore
) -> None:
    server, url = http_tiny
    result = pull(url, store, "web:v1", chunk_bytes=CHUNK)
    assert result.model.name == "web:v1" and result.model.path == store.path_for("web:v1")
    assert_same_files(result.model.path, tiny_dir)
    files = record(result.model.path)
    assert files[WEIGHTS]["sha256"] == sha256(tiny_dir / WEIGHTS)
    assert all(f["verified_by"] is None for f in files.values())  # nothing to verify against
    assert not store.staging_path("web:v1").exists()
    assert store.resolve("web:v1").path == result.model.path
    gets = [r for r in server.requests if r.startswith("GET") and WEIGHTS in r]
    assert len(gets) > 1 and all("bytes=" in r for r in gets)  # range reads, several in flight


def test_pull_from_s3_names_the_model_after_the_prefix(
    tiny_dir: Path, store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_s3() as s3:
        uri = s3.upload(tiny_dir, "models/tiny-s3")
        for key, value in s3.env(tmp_path).items():
            monkeypatch.setenv(key, value)
        result = pull(uri, store)
        # moto runs in this process and its error pages go through botocore: no empty profile
        monkeypatch.delenv("AWS_PROFILE")
        with pytest.raises(
            ModelLoadError, match=r"^the bucket of 's3://no-such-bucket/m' does not"
        ):
            pull("s3://no-such-bucket/m", store)
    assert not store.staging_path("m").exists()
    assert result.model.name == "tiny-s3:latest"
    assert_same_files(store.resolve("tiny-s3").path, tiny_dir)
    assert record(result.model.path)[WEIGHTS]["sha256"] == sha256(tiny_dir / WEIGHTS)


def test_interrupted_pull_resumes_from_the_part_file(
    http_tiny: tuple[RangeServer, str], tiny_dir: Path, store: ModelStore
) -> None:
    server, url = http_tiny

    def stop_midway(name: str, done: int, total: int) -> None:
        if name == WEIGHTS and done >= 3 * CHUNK:
            raise Interrupted

    with pytest.raises(Interrupted):
        pull(url, store, "resumed", progress=stop_midway, chunk_bytes=CHUNK)
    with pytest.raises(ModelNotFoundError):
        store.resolve("resumed")  # nothing half-pulled is in the store
    part = store.staging_path("resumed") / (WEIGHTS + PART)
    assert part.stat().st_size >= 3 * CHUNK
    resume_at = 2 * CHUNK + 12345  # a torn write: the .part ends mid-chunk
    os.truncate(part, resume_at)
    server.requests.clear()

    seen: list[tuple[str, int]] = []
    result = pull(url, store, "resumed", progress=lambda n, d, t: seen.append((n, d)))

    assert_same_files(result.model.path, tiny_dir)
    assert record(result.model.path)[WEIGHTS]["sha256"] == sha256(tiny_dir / WEIGHTS)
    assert [f.resumed_at for f in result.files if f.name == WEIGHTS] == [resume_at]
    weight_gets = [r for r in server.requests if r.startswith("GET") and WEIGHTS in r]
    # The resumed read starts where the .part ends, and nothing before it is read again. (Reads
    # the interrupted pull left in flight may still arrive, but all lie past 3 chunks.)
    starts = [int(r.rsplit("bytes=", 1)[1].split("-")[0]) for r in weight_gets]
    size = (tiny_dir / WEIGHTS).stat().st_size
    assert any(r.endswith(f"bytes={resume_at}-{size - 1}") for r in weight_gets), weight_gets
    assert min(starts) == resume_at
    # Files finished before the interruption are not fetched again.
    assert not [r for r in server.requests if r.startswith("GET") and "config.json" in r]
    assert (WEIGHTS, resume_at) in seen


def test_part_of_a_file_that_changed_size_is_refetched_whole(
    tiny_dir: Path, store: ModelStore, tmp_path: Path
) -> None:
    source = tmp_path / "changing"
    shutil.copytree(tiny_dir, source)

    def stop_midway(name: str, done: int, total: int) -> None:
        if name == WEIGHTS and done >= CHUNK:
            raise Interrupted

    with serve_http(RangeServer(source)) as server:
        url = f"http://127.0.0.1:{server.port}"
        with pytest.raises(Interrupted):
            pull(url, store, "changing", progress=stop_midway, chunk_bytes=CHUNK)
        with (source / WEIGHTS).open("ab") as f:
            f.write(b"\0" * 100)  # a new version of the file at the source
        server.requests.clear()
        result = pull(url, store, "changing", chunk_bytes=CHUNK)
    weight_gets = [r for r in server.requests if r.startswith("GET") and WEIGHTS in r]
    # Ranges are read several at a time, so they may arrive in any order: the part was
    # dropped when the whole file is fetched again from byte 0.
    starts = sorted(int(r.split("bytes=")[1].split("-")[0]) for r in weight_gets)
    assert starts[0] == 0
    assert (result.model.path / WEIGHTS).read_bytes() == (source / WEIGHTS).read_bytes()


def test_digest_files_are_checked(tiny_dir: Path, store: ModelStore, tmp_path: Path) -> None:
    source = tmp_path / "with-digests"
    shutil.copytree(tiny_dir, source)
    (source / (WEIGHTS + ".sha256")).write_text(f"{sha256(tiny_dir / WEIGHTS)}  {WEIGHTS}\n")
    (source / "SHA256SUMS").write_text(f"{sha256(tiny_dir / 'config.json')} *config.json\n")

    result = pull(f"file://{source}", store, "checked")
    verified = {f.name: f.verified_by for f in result.files if f.verified_by}
    assert verified == {
        WEIGHTS: str(source / (WEIGHTS + ".sha256")),
        "config.json": str(source / "SHA256SUMS"),
    }
    assert record(result.model.path)[WEIGHTS]["verified_by"] == verified[WEIGHTS]


def test_digest_mismatch_fails_and_installs_nothing(
    tiny_dir: Path, store: ModelStore, tmp_path: Path
) -> None:
    source = tmp_path / "bad-digest"
    shutil.copytree(tiny_dir, source)
    (source / (WEIGHTS + ".sha256")).write_text("0" * 64 + "\n")  # a bare digest names its file
    with pytest.raises(ModelLoadError, match=r"model\.safetensors' arrived with sha256 .* says 0+"):
        pull(str(source), store, "corrupt")
    with pytest.raises(ModelNotFoundError):
        store.resolve("corrupt")
    assert not (store.staging_path("corrupt") / (WEIGHTS + PART)).exists()  # refetched whole


def test_pull_without_config_is_a_clear_error(
    http_tiny: tuple[RangeServer, str], store: ModelStore
) -> None:
    _, url = http_tiny
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors weights|no config\.json"):
        pull(url.replace("/files/tiny", "/files/elsewhere"), store, "nothing")


def _sums(source: Path, overrides: dict[str, str] | None = None) -> None:
    names = sorted(p.name for p in source.iterdir() if p.name != "SHA256SUMS")
    digests = {n: sha256(source / n) for n in names} | (overrides or {})
    (source / "SHA256SUMS").write_text("".join(f"{digests[n]}  {n}\n" for n in names))


def test_a_staged_file_the_source_no_longer_vouches_for_is_fetched_again(
    tiny_dir: Path, store: ModelStore, tmp_path: Path
) -> None:
    source = tmp_path / "stuck"
    shutil.copytree(tiny_dir, source)
    _sums(source, {WEIGHTS: "0" * 64})  # a wrong digest: the first pull fails on the weights
    with pytest.raises(ModelLoadError, match=r"model\.safetensors.* arrived with sha256"):
        pull(str(source), store, "stuck")
    config = source / "config.json"
    config.write_text(config.read_text().replace('"silu"', '"gelu"'))  # same size, new bytes
    _sums(source)  # the source fixed: every digest is right now (and SHA256SUMS the same size)
    result = pull(str(source), store, "stuck")
    assert_same_files(result.model.path, source)  # config.json and SHA256SUMS as they are now
    assert {f.name for f in result.files if f.verified_by} >= {"config.json", WEIGHTS}


def test_rm_clears_an_unfinished_pull(tiny_dir: Path, store: ModelStore, tmp_path: Path) -> None:
    source = tmp_path / "broken"
    shutil.copytree(tiny_dir, source)
    (source / (WEIGHTS + ".sha256")).write_text("0" * 64 + "\n")
    with pytest.raises(ModelLoadError):
        pull(str(source), store, "broken")
    assert store.staging_path("broken").is_dir()
    store.remove("broken")
    assert not store.staging_path("broken").exists()
    assert not store.models_dir.exists() or not any(store.models_dir.iterdir())
    with pytest.raises(ModelNotFoundError):
        store.remove("broken")


def test_a_link_too_slow_for_a_range_per_timeout_still_pulls(
    tiny_dir: Path, store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ranges that time out are asked for again in smaller ones (from the bytes already
    written), so a slow link makes progress instead of failing at the same range forever."""
    monkeypatch.setenv("EMBER_REMOTE_TIMEOUT", "1")
    size = (tiny_dir / WEIGHTS).stat().st_size
    with serve_http(RangeServer(tiny_dir, rate_bps=512 * 1024)) as server:
        url = f"http://127.0.0.1:{server.port}"
        # One request for the whole file would take about twice the timeout.
        result = pull(url, store, "slow", chunk_bytes=2 * size)
    assert_same_files(result.model.path, tiny_dir)
    lengths = []
    for r in server.requests:
        if r.startswith("GET") and WEIGHTS in r and "bytes=" in r:
            first, last = r.split("bytes=")[1].split("-")
            lengths.append(int(last) - int(first) + 1)
    assert lengths[0] == size and max(lengths[1:]) < size  # the whole, then smaller ranges


def test_a_bare_name_says_what_source_may_be(
    store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as info:
        pull("llama3.2", store)
    message = info.value.message
    assert "must be a local path or a URI" in message and "hf://" in message
    assert "does not pull from the Ollama registry" in message
    # A name too long to be a path: the OS refuses it (ENAMETOOLONG), which had been a 500 on
    # /api/pull; it is the same bare name.
    with pytest.raises(ModelNotFoundError, match="must be a local path or a URI"):
        pull("a" * 5000, store)


def test_a_quantization_ember_cannot_serve_fails_before_the_weights(
    tiny_dir: Path, store: ModelStore, tmp_path: Path
) -> None:
    """An AWQ checkpoint is refused as the pull starts, naming the method, not after copying
    every weight file to then fail at the first load."""
    src = tmp_path / "awq"
    shutil.copytree(tiny_dir, src)
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128}
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="quantization 'awq'"):
        pull(str(src), store, "awq")
    assert not store.staging_path("awq").exists() or not any(
        p.suffix == ".safetensors" or p.name.endswith(PART)
        for p in store.staging_path("awq").iterdir()
    )


def test_a_second_pull_of_the_same_model_fails_while_the_first_runs(
    tiny_dir: Path, store: ModelStore
) -> None:
    """Two pulls of one name would append to the same .part files; the second says one is
    running instead, and once the first has ended a pull goes through."""
    import fcntl

    assert_same_files(pull(str(tiny_dir), store, "twice").model.path, tiny_dir)
    lock = store.pull_lock_path("twice:latest")
    with open(lock, "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running `ember pull twice` holds it
        with pytest.raises(ConflictError, match="an 'ember pull' of twice:latest is running"):
            pull(str(tiny_dir), store, "twice")
        assert not store.staging_path("twice").exists()  # nothing of the first one's touched
        # nor may `ember rm` pull the folder from under it (a pull after would run beside it)
        with pytest.raises(ConflictError, match=r"is running .* before removing it"):
            store.remove("twice")
        assert store.resolve("twice").path.is_dir()
    store.remove("twice")
    assert not store.models_dir.exists() or not any(store.models_dir.iterdir())


def test_an_index_naming_a_path_outside_the_model_writes_nothing_there(
    tiny_dir: Path, store: ModelStore, tmp_path: Path
) -> None:
    """A remote index is not trusted with paths: a shard named by an absolute path is refused
    before any file is fetched, and nothing is written outside the store."""
    source = tmp_path / "evil"
    shutil.copytree(tiny_dir, source)
    outside = tmp_path / "outside" / "evil.safetensors"
    index = {"weight_map": {"model.embed_tokens.weight": str(outside)}}
    (source / "model.safetensors.index.json").write_text(json.dumps(index))
    with serve_http(RangeServer(source, prefix="/m/evil")) as server:
        url = f"http://127.0.0.1:{server.port}/m/evil"
        with pytest.raises(ModelLoadError, match=r"names .* as a shard; a shard must be a file"):
            pull(url, store, "evil")
    assert not outside.exists() and not outside.parent.exists()
    assert store.list() == []


@pytest.fixture
def hub(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A stand-in for the Hugging Face Hub on loopback serving hf://org/tiny@v1.0: the files
    under /org/tiny/resolve/v1.0/ and the API's file list with each LFS file's sha256 (what
    `huggingface_hub.model_info(files_metadata=True)` reads). Yields the API record's path."""
    root = tmp_path / "hub"
    shutil.copytree(tiny_dir, root / "org" / "tiny" / "resolve" / "v1.0")
    record = root / "api" / "models" / "org" / "tiny" / "revision" / "v1.0"
    record.parent.mkdir(parents=True)
    siblings = [{"rfilename": p.name} for p in tiny_dir.iterdir()]
    for s in siblings:
        if s["rfilename"] == WEIGHTS:
            s["lfs"] = {"sha256": sha256(tiny_dir / WEIGHTS), "size": 1, "pointerSize": 134}
    record.write_text(json.dumps({"id": "org/tiny", "siblings": siblings}))
    with serve_http(RangeServer(root)) as server:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.port}")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hf-cache"))
        yield record


def test_a_hub_pull_is_checked_against_the_hubs_sha256(
    hub: Path, tiny_dir: Path, store: ModelStore
) -> None:
    """hf:// repositories publish no digest files: the weights are checked against the sha256
    the Hub records for each LFS file, and a mismatch fails the pull and installs nothing."""
    result = pull("hf://org/tiny@v1.0", store, "hubbed")
    assert_same_files(result.model.path, tiny_dir)
    weights = next(f for f in result.files if f.name == WEIGHTS)
    assert weights.verified_by == "the Hub's record of hf://org/tiny@v1.0"
    assert record(result.model.path)[WEIGHTS]["sha256"] == sha256(tiny_dir / WEIGHTS)

    info = json.loads(hub.read_text())
    for s in info["siblings"]:
        if "lfs" in s:
            s["lfs"]["sha256"] = "0" * 64  # the bytes served are not the ones the Hub records
    hub.write_text(json.dumps(info))
    with pytest.raises(ModelLoadError, match=r"but the Hub's record of hf://org/tiny@v1\.0 says"):
        pull("hf://org/tiny@v1.0", store, "mismatch")
    with pytest.raises(ModelNotFoundError):
        store.resolve("mismatch")
