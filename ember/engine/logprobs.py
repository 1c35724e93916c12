"""Logprobs inside the engine: the record the sampler (generated tokens) and the runner (prompt
tokens) read back from the device (sampler.gather_logprobs), and how the output processor turns
it into vLLM's shape (ember/logprobs.py). No torch here: engine/messages.py carries these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ember.logprobs import Logprob


@dataclass(slots=True)
class PositionLogprobs:
    """One position, as the core sends it to the API side: two short lists pickle much faster
    over the core's pipe than an object per token."""

    token_ids: list[int]  # the chosen token (sampled, or the prompt's next one), then the top k
    logprobs: list[float]  # in the same order
    rank: int  # the chosen token's: how many tokens have a logprob >= its own (vLLM's rule)


def to_dict(position: PositionLogprobs, decode: Callable[[int], str] | None) -> dict[int, Logprob]:
    """vLLM's {token id: Logprob} for one position: the chosen token first with its rank, then
    the top k ranked 1..k; a chosen token that is among the top k keeps its place and takes its
    top-k rank, as in vLLM. `decode` gives each token's text (None: no text)."""
    ranks = [position.rank, *range(1, len(position.token_ids))]
    return {
        t: Logprob(lp, rank, decode(t) if decode is not None else None)
        for t, lp, rank in zip(position.token_ids, position.logprobs, ranks, strict=True)
    }
