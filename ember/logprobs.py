"""Logprobs as vLLM's offline API gives them (`vllm.logprobs`): for each position a dict
{token id: Logprob} holding the chosen token (the one sampled, or the prompt's own) and the top
k. The chosen token is the dict's first key, as in vLLM; when it is also among the top k it
appears once, with its top-k rank."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Logprob:
    logprob: float  # natural log of the probability, from the raw logits (before sampling steps)
    rank: int | None = None  # 1: the likeliest token; the chosen token's counts ties as vLLM
    decoded_token: str | None = None  # None when SamplingParams.detokenize is False


# One dict per generated token.
SampleLogprobs = list[dict[int, Logprob]]
# One per prompt token; None for the first, which nothing predicts.
PromptLogprobs = list[dict[int, Logprob] | None]


def chosen(position: dict[int, Logprob]) -> tuple[int, Logprob]:
    """The token this position holds (sampled or the prompt's) and its Logprob."""
    return next(iter(position.items()))


def top(position: dict[int, Logprob], k: int) -> list[tuple[int, Logprob]]:
    """The k likeliest tokens at this position, likeliest first: the dict less the chosen token
    when that one ranked below k. `k` is the request's logprobs count: a dict alone cannot tell
    k=2 with the chosen token second from k=1 with it outside."""
    return sorted(position.items(), key=lambda item: item[1].rank or 0)[:k]
