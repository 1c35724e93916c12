"""Sampling parameters, named and defaulted as vLLM names them."""

from __future__ import annotations

import copy
import enum
import math
import numbers
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ember.engine.structured import StructuredSpec
from ember.errors import InvalidRequestError

# Per-request bounds: the stop-string scan runs on every new token of every request.
MAX_STOP_STRINGS = 64
MAX_STOP_LENGTH = 1024  # characters
MAX_STOP_TOKEN_IDS = 1024
MAX_LOGIT_BIAS = 1024  # tokens one request may bias
MAX_LOGIT_BIAS_VALUE = 100.0  # OpenAI's bound: -100 bans a token, 100 all but forces it
MAX_TOP_K = 2**31 - 1
_FLOAT_FIELDS = (
    "temperature",
    "top_p",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
)
_INT_FIELDS = ("n", "top_k", "min_tokens", "penalty_window")
_OPTIONAL_INT_FIELDS = (
    "seed",
    "max_tokens",
    "logprobs",
    "prompt_logprobs",
    "truncate_prompt_tokens",
)


class OutputKind(enum.Enum):
    CUMULATIVE = 0  # each RequestOutput holds all text and tokens so far (offline API)
    DELTA = 1  # each RequestOutput holds only what is new since the last one (streaming)
    FINAL_ONLY = 2  # one RequestOutput when the request finishes


@dataclass(slots=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # > 1 discourages tokens seen in prompt or output
    # Tokens the penalties look back over (Ollama's repeat_last_n); 0: the whole sequence.
    penalty_window: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16  # None: up to the context length
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    logprobs: int | None = None  # number of top logprobs per generated token, 0 = sampled only
    prompt_logprobs: int | None = None  # the same for each prompt token (vLLM's)
    skip_special_tokens: bool = True
    detokenize: bool = True  # False: token ids only, no text (and so no stop strings)
    output_kind: OutputKind = OutputKind.CUMULATIVE
    # Constrained decoding: the output must match this grammar (JSON Schema, JSON object, regex).
    structured: StructuredSpec | None = None
    # Added to the logits of these token ids before sampling (OpenAI's logit_bias).
    logit_bias: dict[int, float] = field(default_factory=dict)
    # Only these token ids may be sampled (vLLM's allowed_token_ids); None: any.
    allowed_token_ids: list[int] | None = None
    # Keep only the last k prompt tokens (vLLM's); -1: the last max_model_len - 1 (room for one
    # new token); None: all.
    truncate_prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        self._normalise()
        self.validate()

    def clone(self) -> SamplingParams:
        """A deep copy, as vLLM's clone(): changing it leaves this one alone."""
        return copy.deepcopy(self)

    def _normalise(self) -> None:
        """Coerce what vLLM's SamplingParams accepts to one form: None for the list and dict
        fields means empty, True for logprobs means 1, seed -1 means random, top_k -1 means off,
        logit_bias keys may be strings of token ids. Anything of a wrong type is a clear error."""
        for name in ("logprobs", "prompt_logprobs"):
            if getattr(self, name) is False:  # vLLM would give the sampled token's; True is 1
                setattr(self, name, None)
        for name in _FLOAT_FIELDS:
            setattr(self, name, _number(name, getattr(self, name)))
        for name in _INT_FIELDS:
            setattr(self, name, _integer(name, getattr(self, name)))
        for name in _OPTIONAL_INT_FIELDS:
            if getattr(self, name) is not None:
                setattr(self, name, _integer(name, getattr(self, name)))
        if self.top_k == -1:
            self.top_k = 0
        if self.seed == -1:
            self.seed = None
        self.stop = _stop_strings(self.stop)
        self.stop_token_ids = token_id_list("stop_token_ids", self.stop_token_ids or [])
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = token_id_list("allowed_token_ids", self.allowed_token_ids)
        self.logit_bias = _logit_bias(self.logit_bias or {})

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5 or self.top_k == 1

    def validate(self) -> None:
        def bad(param: str, message: str) -> InvalidRequestError:
            return InvalidRequestError(message, param=param)

        if self.n != 1:
            raise bad("n", f"n must be 1, got {self.n}; send separate requests for more samples")
        if self.temperature < 0:
            raise bad("temperature", f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise bad("min_p", f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise bad(
                "repetition_penalty",
                f"repetition_penalty must be > 0, got {self.repetition_penalty}",
            )
        if not -2 <= self.presence_penalty <= 2:
            raise bad(
                "presence_penalty",
                f"presence_penalty must be in [-2, 2], got {self.presence_penalty}",
            )
        if not -2 <= self.frequency_penalty <= 2:
            raise bad(
                "frequency_penalty",
                f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}",
            )
        if self.penalty_window < 0:
            raise bad("penalty_window", f"penalty_window must be >= 0, got {self.penalty_window}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise bad("max_tokens", f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.min_tokens < 0:
            raise bad("min_tokens", f"min_tokens must be >= 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad(
                "min_tokens",
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})",
            )
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise bad("logprobs", f"logprobs must be in [0, 20], got {self.logprobs}")
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= 20:
            raise bad(
                "prompt_logprobs", f"prompt_logprobs must be in [0, 20], got {self.prompt_logprobs}"
            )
        if self.stop and not self.detokenize:
            raise bad("stop", "stop strings need detokenize=True")
        if any(not s for s in self.stop):
            raise bad("stop", "stop strings must not be empty")
        if self.structured is not None:
            self.structured.validate()
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise bad("seed", f"seed must fit in 64 bits, got {self.seed}")
        k = self.truncate_prompt_tokens
        if k is not None and (k == 0 or k < -1):
            raise bad(
                "truncate_prompt_tokens",
                f"truncate_prompt_tokens must be at least 1, or -1 (all that fit), got {k}",
            )
        self._validate_bounds(bad)

    def _validate_bounds(self, bad: Callable[[str, str], InvalidRequestError]) -> None:
        """Bounds that keep one request's cost on the engine bounded (and NaN out of it)."""
        for name in _FLOAT_FIELDS:
            if not math.isfinite(getattr(self, name)):
                raise bad(name, f"{name} must be a finite number")
        if not 0 <= self.top_k <= MAX_TOP_K:
            raise bad(
                "top_k",
                f"top_k must be 0 or -1 (off), or in [1, {MAX_TOP_K}], got {self.top_k}",
            )
        if len(self.stop) > MAX_STOP_STRINGS:
            raise bad("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        if any(len(s) > MAX_STOP_LENGTH for s in self.stop):
            raise bad("stop", f"stop strings must be at most {MAX_STOP_LENGTH} characters long")
        self._validate_token_filters(bad)
        if len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            raise bad(
                "stop_token_ids",
                f"at most {MAX_STOP_TOKEN_IDS} stop token ids, got {len(self.stop_token_ids)}",
            )

    def _validate_token_filters(self, bad: Callable[[str, str], InvalidRequestError]) -> None:
        if len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise bad(
                "logit_bias",
                f"logit_bias may bias at most {MAX_LOGIT_BIAS} tokens, got {len(self.logit_bias)}",
            )
        for token, value in self.logit_bias.items():
            if not (math.isfinite(value) and abs(value) <= MAX_LOGIT_BIAS_VALUE):
                raise bad(
                    "logit_bias",
                    f"logit_bias values must be in [-100, 100], got {value} for token {token}",
                )
        if self.allowed_token_ids is not None and not self.allowed_token_ids:
            raise bad("allowed_token_ids", "allowed_token_ids must not be empty")

    def token_ids_outside(self, vocab_size: int) -> tuple[str, int] | None:
        """The first (param, token id) of stop_token_ids, logit_bias or allowed_token_ids that
        is not in the vocabulary, if any."""
        for param, ids in (
            ("stop_token_ids", self.stop_token_ids),
            ("logit_bias", list(self.logit_bias)),
            ("allowed_token_ids", self.allowed_token_ids or []),
        ):
            bad = next((t for t in ids if not 0 <= t < vocab_size), None)
            if bad is not None:
                return param, bad
        return None


def _integer(name: str, value: Any, param: str | None = None) -> int:
    """`value` as an int: ints (bools and numpy ints too), never floats or strings."""
    try:
        return int(operator.index(value))
    except TypeError:
        raise InvalidRequestError(
            f"{name} must be an integer, got {value!r}", param=param or name
        ) from None


def _number(name: str, value: Any) -> float:
    if not isinstance(value, numbers.Real):
        raise InvalidRequestError(f"{name} must be a number, got {value!r}", param=name)
    return float(value)


def _stop_strings(stop: Any) -> list[str]:
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else _as_list(stop)
    if items is None or not all(isinstance(s, str) for s in items):
        raise InvalidRequestError("stop must be a string or a list of strings", param="stop")
    return items


def token_id_list(name: str, ids: Any, param: str | None = None) -> list[int]:
    """`ids` as a new list of ints (numpy's too); a clear error for floats, a string or a
    non-list, naming `name` (and `param`, default `name`)."""
    items = None if isinstance(ids, str | bytes) else _as_list(ids)
    if items is None:
        raise InvalidRequestError(f"{name} must be a list of token ids", param=param or name)
    return [_integer(name, t, param) for t in items]


def _as_list(value: Any) -> list[Any] | None:
    """A copy of an iterable as a list (the caller's own list is never kept); None if it is
    not one."""
    try:
        return list(value)
    except TypeError:
        return None


def _logit_bias(bias: Any) -> dict[int, float]:
    """OpenAI clients send token ids as strings ("50256": -100); vLLM converts them."""
    if not isinstance(bias, Mapping):
        raise InvalidRequestError("logit_bias must map token ids to biases", param="logit_bias")
    out: dict[int, float] = {}
    for key, value in bias.items():
        try:
            token = int(key) if isinstance(key, str) else operator.index(key)
        except (TypeError, ValueError):
            raise InvalidRequestError(
                f"logit_bias keys must be token ids, got {key!r}", param="logit_bias"
            ) from None
        out[token] = _number("logit_bias", value)
    return out
