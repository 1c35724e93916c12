"""vLLM's pooling API on the offline LLM (`LLM.encode`, `embed`, `score`) for embedding models.
It runs the Embedder that serves /v1/embeddings (engine/embedder.py), so both give the same
vectors: pooled and L2-normalised as the model's sentence-transformers files say."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ember.engine.embedder import Embedder
from ember.errors import InvalidRequestError
from ember.outputs import (
    EmbeddingOutput,
    EmbeddingRequestOutput,
    PoolingOutput,
    PoolingRequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from ember.sampling_params import token_id_list

TRUNCATE_HINT = "pass truncate_prompt_tokens=-1 to cut it to the model's limit"


@dataclass(slots=True)
class Pooled:
    request_id: str
    prompt_token_ids: list[int]
    vector: list[float]


class Pooler:
    def __init__(self, embedder: Embedder, ids: Iterator[int]) -> None:
        self.embedder = embedder
        self._ids = ids  # shared with LLM.generate's request ids

    def encode(
        self, prompts: list[Any], truncate_prompt_tokens: int | None
    ) -> list[PoolingRequestOutput[PoolingOutput]]:
        return [
            PoolingRequestOutput(
                p.request_id, PoolingOutput(torch.tensor(p.vector)), p.prompt_token_ids
            )
            for p in self._pool(prompts, truncate_prompt_tokens)
        ]

    def embed(
        self, prompts: list[Any], truncate_prompt_tokens: int | None
    ) -> list[EmbeddingRequestOutput]:
        return [
            EmbeddingRequestOutput(p.request_id, EmbeddingOutput(p.vector), p.prompt_token_ids)
            for p in self._pool(prompts, truncate_prompt_tokens)
        ]

    def score(
        self, first: list[Any], second: list[Any], truncate_prompt_tokens: int | None
    ) -> list[ScoringRequestOutput]:
        """Cosine similarity of each pair: 1:1, 1:N (the first paired with each) or N:N."""
        if not first or not second or len(first) not in (1, len(second)):
            raise InvalidRequestError(
                f"score pairs 1 text with N, or N with N; got {len(first)} and {len(second)}",
                param="data_1",
            )
        pooled = self._pool(first + second, truncate_prompt_tokens)
        left, right = pooled[: len(first)], pooled[len(first) :]
        pad = self.embedder.model.cfg.pad_token_id
        return [
            ScoringRequestOutput(
                f"{a.request_id}_{b.request_id}",
                ScoringOutput(_cosine(a.vector, b.vector)),
                [*a.prompt_token_ids, pad, *b.prompt_token_ids],  # as vLLM joins a pair
            )
            for a, b in zip(left * len(right) if len(left) == 1 else left, right, strict=True)
        ]

    def _pool(self, prompts: list[Any], truncate_prompt_tokens: int | None) -> list[Pooled]:
        """Every prompt is checked before any runs: one bad prompt fails the call."""
        truncate = self.embedder.truncation(truncate_prompt_tokens)
        batch = [self._token_ids(p, truncate) for p in prompts]
        vectors = self.embedder.embed_ids(batch).vectors if batch else []
        return [Pooled(str(next(self._ids)), ids, v) for ids, v in zip(batch, vectors, strict=True)]

    def _token_ids(self, prompt: Any, truncate: bool) -> list[int]:
        text = prompt.get("prompt") if isinstance(prompt, dict) else prompt
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            ids = token_id_list("prompt_token_ids", prompt["prompt_token_ids"], "prompt")
            self.embedder.check_ids(ids)
            return ids
        if not isinstance(text, str):
            raise InvalidRequestError(
                "a prompt must be a string, {'prompt': '...'} or {'prompt_token_ids': [...]}, "
                f"got {type(prompt).__name__}",
                param="prompt",
            )
        return self.embedder.tokenize(text, truncate, TRUNCATE_HINT)


def check_pooling_args(
    pooling_task: str | None,
    pooling_params: Any,
    tokenization_kwargs: dict[str, Any] | None,
    truncate_prompt_tokens: int | None,
) -> int | None:
    """The arguments of vLLM's pooling methods that ember takes; returns truncate_prompt_tokens,
    which tokenization_kwargs may also carry (as vLLM merges them)."""
    if pooling_task not in (None, "embed"):
        raise InvalidRequestError(
            f"pooling_task={pooling_task!r} is not supported: ember's embedding models give one "
            "vector per input (pooling_task='embed')",
            param="pooling_task",
        )
    if pooling_params is not None:
        raise InvalidRequestError(
            "pooling_params are not supported: ember returns the model's own pooling, "
            "normalised as its /v1/embeddings route does; leave pooling_params out",
            param="pooling_params",
        )
    extra = dict(tokenization_kwargs or {})
    k = extra.pop("truncate_prompt_tokens", truncate_prompt_tokens)
    if extra:
        names = ", ".join(sorted(extra))
        raise InvalidRequestError(
            f"tokenization_kwargs {names} are not supported; only truncate_prompt_tokens is",
            param="tokenization_kwargs",
        )
    return k  # type: ignore[no-any-return]


def _cosine(a: list[float], b: list[float]) -> float:
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / (norms or 1.0)
