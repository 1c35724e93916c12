"""A request's state inside the engine core."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from ember.engine.logprobs import PositionLogprobs
from ember.errors import InvalidRequestError
from ember.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED = 3


@dataclass(slots=True, eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_ids: frozenset[int]
    max_tokens: int  # resolved: never runs past the context length
    arrival_time: float = field(default_factory=time.monotonic)
    output_token_ids: list[int] = field(default_factory=list)
    # Invariant: the first num_computed_tokens of all_token_ids have their K/V in the cache.
    num_computed_tokens: int = 0
    num_cached_tokens: int = -1  # prompt tokens found in the prefix cache at first schedule
    status: RequestStatus = RequestStatus.WAITING
    block_ids: list[int] = field(default_factory=list)
    # Chained hashes of this request's full blocks, in order (prefix caching).
    block_hashes: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    first_scheduled_time: float | None = None
    num_preemptions: int = 0
    # With params.prompt_logprobs: entry j for prompt token j + 1 (predicted at position j),
    # filled as the prompt's chunks run, and handed out once with the first token.
    prompt_logprobs: list[PositionLogprobs] = field(default_factory=list)
    prompt_logprobs_sent: bool = False

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    def token_at(self, i: int) -> int:
        n = len(self.prompt_token_ids)
        return self.prompt_token_ids[i] if i < n else self.output_token_ids[i - n]

    def tokens(self, start: int, end: int) -> list[int]:
        n = len(self.prompt_token_ids)
        if end <= n:
            return self.prompt_token_ids[start:end]
        if start >= n:
            return self.output_token_ids[start - n : end - n]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - n]

    @property
    def finished(self) -> bool:
        return self.status == RequestStatus.FINISHED


def build_request(
    request_id: str,
    prompt_token_ids: list[int],
    params: SamplingParams,
    eos_token_ids: frozenset[int],
    max_model_len: int,
    vocab_size: int,
    arrival_time: float | None = None,
) -> Request:
    """Validate a prompt against the model's limits and build its request; raises
    InvalidRequestError with a message that says what to change."""
    prompt_token_ids = _truncated(prompt_token_ids, params.truncate_prompt_tokens, max_model_len)
    n = len(prompt_token_ids)
    if n == 0:
        raise InvalidRequestError("the prompt is empty; send at least one token", param="prompt")
    if n >= max_model_len:
        raise InvalidRequestError(
            f"this model's maximum context length is {max_model_len} tokens, but the "
            f"prompt has {n} tokens; shorten the prompt",
            param="prompt",
        )
    bad = next(
        (t for t in prompt_token_ids if not (isinstance(t, int) and 0 <= t < vocab_size)), None
    )
    if bad is not None and not isinstance(bad, int):
        raise InvalidRequestError(f"prompt token ids must be integers, got {bad!r}", param="prompt")
    if bad is not None:
        raise InvalidRequestError(
            f"token id {bad} is outside the vocabulary (0..{vocab_size - 1})", param="prompt"
        )
    outside = params.token_ids_outside(vocab_size)
    if outside is not None:
        raise InvalidRequestError(
            f"{outside[0]} names token id {outside[1]}, which is outside the vocabulary "
            f"(0..{vocab_size - 1})",
            param=outside[0],
        )
    room = max_model_len - n
    max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
    req = Request(request_id, list(prompt_token_ids), params, eos_token_ids, max_tokens)
    if arrival_time is not None:
        req.arrival_time = arrival_time
    return req


def _truncated(ids: list[int], keep: int | None, max_model_len: int) -> list[int]:
    """The last `keep` prompt tokens (SamplingParams.truncate_prompt_tokens); -1 keeps as many
    as leave room for one new token."""
    if keep is None:
        return ids
    return ids[-(max_model_len - 1 if keep == -1 else keep) :]
