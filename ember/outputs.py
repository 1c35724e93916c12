"""What the engine returns, shaped like vLLM's offline API."""

from __future__ import annotations

from dataclasses import dataclass, field

from ember.logprobs import PromptLogprobs, SampleLogprobs


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
