"""What the engine returns, shaped like vLLM's offline API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from ember.logprobs import PromptLogprobs, SampleLogprobs

if TYPE_CHECKING:
    import torch


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    stop_reason: int | str | None = None  # the stop string or token id that ended it
    # With SamplingParams.logprobs: for each generated token, the sampled token and the top
    # ones (ember/logprobs.py); None without.
    logprobs: SampleLogprobs | None = None
    # The sum of the sampled tokens' logprobs so far, as vLLM's; None without logprobs.
    cumulative_logprob: float | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestMetrics:
    """Wall-clock timestamps (time.monotonic seconds) and token counts of one request."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_generation_tokens: int = 0


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
    num_cached_tokens: int = 0
    extra: dict[str, object] = field(default_factory=dict)
    # With SamplingParams.prompt_logprobs, as vLLM gives them: None for the first prompt token
    # (nothing predicts it), then for each later one that token and the top ones.
    prompt_logprobs: PromptLogprobs | None = None


# What LLM.encode / embed / score return for embedding models, as vLLM's pooling outputs.

_O = TypeVar("_O")


@dataclass(slots=True)
class PoolingOutput:
    data: torch.Tensor  # the pooled vector [hidden], on the CPU


@dataclass(slots=True)
class EmbeddingOutput:
    embedding: list[float]

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)


@dataclass(slots=True)
class ScoringOutput:
    score: float  # the cosine similarity of the pair's embeddings


@dataclass(slots=True)
class PoolingRequestOutput(Generic[_O]):
    request_id: str
    outputs: _O
    prompt_token_ids: list[int]
    num_cached_tokens: int = 0  # embeddings use no prefix cache
    finished: bool = True


@dataclass(slots=True)
class EmbeddingRequestOutput(PoolingRequestOutput[EmbeddingOutput]):
    pass


@dataclass(slots=True)
class ScoringRequestOutput(PoolingRequestOutput[ScoringOutput]):
    pass
