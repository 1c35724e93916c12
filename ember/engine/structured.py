"""Structured outputs: a grammar (JSON Schema, any JSON object, a regex or a Lark grammar) that
constrains which tokens a request may sample, enforced with llguidance.

The API process builds a StructuredSpec (plain strings, so SamplingParams stays picklable and
crosses to the core's process) and validates it there, so a bad schema is a 400. The core builds
one LLTokenizer per model, lazily, caches grammar texts by spec, and keeps one matcher per
request: each step it fills the request's row of a token bitmask before sampling, and advances the
matcher with the sampled token. Masks are computed on the CPU and applied on the logits' device.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ember.errors import InvalidRequestError

if TYPE_CHECKING:  # the API process imports this module for StructuredSpec, without torch
    import torch

log = logging.getLogger("ember.engine")

SpecKind = Literal["json_schema", "json_object", "regex", "lark"]

# Compact JSON (no free whitespace between tokens): what clients expect from json mode, and it
# keeps a weak model from looping on whitespace until max_tokens.
_JSON_DEFAULTS: Any = {"whitespace_flexible": False}


@dataclass(frozen=True, slots=True)
class StructuredSpec:
    """What the output must match. `value`: the JSON Schema as JSON text, the regex, or the Lark
    grammar; unused for json_object."""

    kind: SpecKind
    value: str = ""

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | bool) -> StructuredSpec:
        return cls("json_schema", json.dumps(schema, sort_keys=True))

    @classmethod
    def json_object(cls) -> StructuredSpec:
        return cls("json_object")

    def grammar(self) -> str:
        """The llguidance grammar text (raises InvalidRequestError if it does not compile)."""
        return _grammar(self)

    def validate(self) -> None:
        self.grammar()


@lru_cache(maxsize=256)
def _grammar(spec: StructuredSpec) -> str:
    from llguidance import LLMatcher

    try:
        if spec.kind == "json_object":
            text = LLMatcher.grammar_from_json_schema('{"type": "object"}', defaults=_JSON_DEFAULTS)
        elif spec.kind == "json_schema":
            text = LLMatcher.grammar_from_json_schema(spec.value, defaults=_JSON_DEFAULTS)
        elif spec.kind == "regex":
            text = LLMatcher.grammar_from_regex(spec.value)
        else:
            text = LLMatcher.grammar_from_lark(spec.value)
    except Exception as e:  # llguidance raises ValueError / RuntimeError on malformed input
        raise InvalidRequestError(f"invalid {spec.kind.replace('_', ' ')}: {e}") from None
    error = LLMatcher.validate_grammar(text)
    if error:
        raise InvalidRequestError(f"invalid {spec.kind.replace('_', ' ')}: {error}")
    return text


class GrammarMatcher:
    """One request's position in its grammar."""

    def __init__(self, matcher: Any) -> None:
        self._m = matcher

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """Set `bitmask[row]` (int32, contiguous, CPU) to the tokens the grammar allows next."""
        v = bitmask[row]
        self._m.unsafe_compute_mask_ptr(v.data_ptr(), v.numel() * v.element_size())

    def accept(self, token_id: int) -> None:
        if not self._m.consume_token(token_id):
            log.warning("grammar rejected token %d: %s", token_id, self._m.get_error())

    @property
    def failed(self) -> bool:
        """The grammar cannot continue (a token it rejected); the request should end."""
        return bool(self._m.is_error())


class StructuredDecoding:
    """The core's grammar machinery for one model: tokenizer.json of `model_dir`, `vocab_size`
    logits (the model's, which may exceed the tokenizer's)."""

    def __init__(self, model_dir: str | Path, vocab_size: int) -> None:
        self.model_dir = Path(model_dir)
        self.vocab_size = vocab_size
        self._tokenizer: Any = None

    def _lltokenizer(self) -> Any:
        if self._tokenizer is None:
            from llguidance import LLTokenizer

            from ember.tokenizer import Tokenizer

            tok = Tokenizer.from_dir(self.model_dir)
            self._tokenizer = LLTokenizer(
                tok.backend_json(), n_vocab=self.vocab_size, eos_token=tok.eos_token_ids or None
            )
        return self._tokenizer

    def matcher(self, spec: StructuredSpec) -> GrammarMatcher:
        from llguidance import LLMatcher

        return GrammarMatcher(LLMatcher(self._lltokenizer(), spec.grammar(), log_level=0))

    def new_bitmask(self, rows: int) -> torch.Tensor:
        import torch

        return torch.full((rows, (self.vocab_size + 31) // 32), -1, dtype=torch.int32)


def apply_bitmask(logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> None:
    """Set to -inf, in place, the logits of `rows` whose bit in their bitmask row is 0.
    bitmask[i] belongs to logits[rows[i]]."""
    import torch

    vocab = logits.shape[1]
    bits = torch.arange(32, dtype=torch.int32, device=logits.device)
    mask = bitmask.to(logits.device, non_blocking=True)
    allowed = ((mask.unsqueeze(-1) >> bits) & 1).bool().flatten(1)
    if allowed.shape[1] < vocab:
        pad = torch.zeros(len(rows), vocab - allowed.shape[1], dtype=torch.bool, device=mask.device)
        allowed = torch.cat([allowed, pad], dim=1)
    idx = torch.tensor(rows, device=logits.device)
    logits[idx] = logits[idx].masked_fill(~allowed[:, :vocab], float("-inf"))
