"""The random dataset: prompts of a chosen token length, as token ids or as text.

Token-id prompts (on /v1/completions) have exactly the drawn length on any server. Text prompts
are made of common words of about one token each; the server's `usage` reports their real length.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ember.bench.config import BenchConfig, BenchError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# Without a tokenizer, ids come from a range that every vocabulary has (the built-in tiny model's
# 1000 included). Most special tokens sit far above it (Llama 3 at 128000+, Qwen at 151643+);
# one that falls inside (Mistral's control tokens) costs the server the same as any other.
FALLBACK_IDS = range(100, 900)

# fmt: off
_WORDS = (
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at",
    "from", "his", "her", "they", "this", "had", "not", "are", "but", "one", "all", "were",
    "when", "there", "can", "more", "time", "been", "some", "would", "out", "about", "people",
    "into", "year", "than", "them", "could", "only", "other", "new", "very", "after", "first",
    "well", "way", "even", "back", "good", "most", "work", "life", "day", "part", "over", "such",
    "long", "great", "small", "world", "still", "place", "under", "water", "house", "again",
    "found", "never", "city", "open", "light", "night", "point", "north", "south", "river",
    "music", "story", "power", "paper", "order", "green",
)
# fmt: on


@dataclass(frozen=True, slots=True)
class Prompt:
    prompt: list[int] | str
    prompt_len: int  # tokens: exact for ids, an estimate for text
    output_len: int  # max_tokens to ask for


def lengths(center: int, range_ratio: float, n: int, rng: random.Random) -> list[int]:
    """n lengths drawn uniformly from [center*(1-r), center*(1+r)], at least 1."""
    low = max(1, int(center * (1 - range_ratio)))
    high = max(low, int(center * (1 + range_ratio)))
    return [rng.randint(low, high) for _ in range(n)]


class Vocab:
    """Token ids safe to put in a random prompt, and (with a tokenizer) text of a given length."""

    def __init__(self, ids: list[int], tokenizer: Tokenizer | None = None) -> None:
        self.ids = ids
        self._tok = tokenizer

    @staticmethod
    def load(path: str | None) -> Vocab:
        if path is None:
            return Vocab(list(FALLBACK_IDS))
        from tokenizers import Tokenizer

        file = Path(path)
        if file.is_dir():
            file = file / "tokenizer.json"
        if not file.is_file():
            raise BenchError(
                f"no tokenizer at {path!r}: pass a model directory holding tokenizer.json"
            )
        tok = Tokenizer.from_file(str(file))
        special = set(tok.get_added_tokens_decoder())
        ids = [i for i in range(tok.get_vocab_size(with_added_tokens=True)) if i not in special]
        if not ids:
            raise BenchError(f"the tokenizer at {path!r} has no ordinary tokens")
        return Vocab(ids, tok)

    def random_ids(self, n: int, rng: random.Random) -> list[int]:
        return rng.choices(self.ids, k=n)

    def random_text(self, n: int, rng: random.Random) -> str:
        """About n tokens of words; exactly n (by this tokenizer) when one was loaded."""
        text = " ".join(rng.choices(_WORDS, k=n))
        if self._tok is None:
            return text
        ids = self._tok.encode(text, add_special_tokens=False).ids[:n]
        return str(self._tok.decode(ids))


def random_prompts(config: BenchConfig, vocab: Vocab) -> list[Prompt]:
    rng = random.Random(config.seed)
    n = config.num_prompts
    ins = lengths(config.input_len, config.range_ratio, n, rng)
    outs = lengths(config.output_len, config.range_ratio, n, rng)
    if config.effective_prompt_format == "ids":
        return [Prompt(vocab.random_ids(i, rng), i, o) for i, o in zip(ins, outs, strict=True)]
    return [Prompt(vocab.random_text(i, rng), i, o) for i, o in zip(ins, outs, strict=True)]
