"""The engine takes a URI as its model: config and tokenizer files are fetched once into the cache,
weights stream from the source; start-up progress reaches the caller from the core's process."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ember.engine.args import EngineArgs
from ember.engine.core_client import MPCoreClient
from ember.engine.llm_engine import LLMEngine
from ember.loader.cache import MARKER, cache_path
from ember.registry import ModelStore
from ember.sampling_params import SamplingParams

from .helpers import RangeServer, serve_http

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ModelStore(tmp_path_factory.mktemp("home")).resolve("tiny").path


def completion(args: EngineArgs) -> list[int]:
    engine = LLMEngine(args)
    engine.add_request("r", engine.encode_prompt("The quick brown fox"), GREEDY)
    tokens: list[int] = []
    while engine.has_unfinished():
        for out in engine.step():
            tokens = list(out.outputs[0].token_ids)
    return tokens


def test_engine_model_may_be_a_uri(tiny_dir: Path, ember_home: Path) -> None:
    local = completion(EngineArgs(model=str(tiny_dir), device="cpu", dtype="float32"))
    with serve_http(RangeServer(tiny_dir, prefix="/m/tiny")) as server:
        uri = f"http://127.0.0.1:{server.port}/m/tiny"
        remote = completion(EngineArgs(model=uri, device="cpu", dtype="float32"))
    assert remote == local and len(local) == 6
    # Fetched once for the tokenizer and the core together (and read once more by the
    # write-through cache as it commits), into $EMBER_HOME/cache.
    assert sum(" /m/tiny/tokenizer.json " in r for r in server.requests if r[:3] == "GET") <= 2
    copy = cache_path(ember_home / "cache", uri)
    assert (copy / MARKER).is_file() and (copy / "tokenizer.json").is_file()


def test_offline_llm_takes_a_uri(tiny_dir: Path) -> None:
    from ember import LLM

    with serve_http(RangeServer(tiny_dir, prefix="/m/tiny")) as server:
        llm = LLM(f"http://127.0.0.1:{server.port}/m/tiny", device="cpu", dtype="float32")
        out = llm.generate("The quick brown fox", GREEDY)[0]
    local = completion(EngineArgs(model=str(tiny_dir), device="cpu", dtype="float32"))
    assert out.outputs[0].token_ids == local


def test_core_process_reports_startup_progress(tiny_dir: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    args = EngineArgs(
        model=str(tiny_dir),
        device="cpu",
        dtype="float32",
        progress=lambda phase, done, total: seen.append((phase, done, total)),
    )
    client = MPCoreClient(args)
    try:
        startup = client.info.startup
    finally:
        client.shutdown()
    phases = list(dict.fromkeys(p for p, _, _ in seen))
    assert phases == ["weights", "kv_cache", "graph_capture"]
    done, total = max((d, t) for p, d, t in seen if p == "weights")
    assert done == total == startup.weights_bytes > 0
    assert startup.load_weights_s > 0 and startup.kv_cache_s > 0


def test_store_resolves_uris_to_their_fetched_files(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path / "home")
    server = RangeServer(tiny_dir, prefix="/org/Tiny-Chat/resolve/v1")
    with serve_http(server):
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.port}")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        model = store.resolve("hf://org/Tiny-Chat@v1")
    assert model.name == "tiny-chat:latest" and model.source == "hf://org/Tiny-Chat@v1"
    assert model.path == cache_path(store.cache_dir, "hf://org/Tiny-Chat@v1")
    assert {"config.json", "tokenizer.json", "params.json"} <= {
        p.name for p in model.path.iterdir()
    }
    assert not list(model.path.glob("*.safetensors"))  # the weights are left to stream

    local = store.resolve(f"file://{tiny_dir}")
    assert local.path == tiny_dir and local.source is None


def test_prefetched_weights_are_read_buffered(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights being read ahead into the page cache are read through it, never with O_DIRECT
    (which would go back to the disk), and load the same model."""
    from ember.engine import startup
    from ember.loader.local import LocalSource

    opened: list[bool | None] = []

    def local_source(root: Path, direct: bool | None = None) -> LocalSource:
        opened.append(direct)
        return LocalSource(root, direct=direct)

    monkeypatch.setattr(startup, "LocalSource", local_source)
    args = EngineArgs(model=str(tiny_dir), device="cpu", dtype="float32")
    prefetched = completion(replace(args, weights_prefetched=True))
    assert opened == [False]
    assert prefetched == completion(args)
