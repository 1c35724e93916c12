"""A GGUF file's tokenizer metadata as a `tokenizers` Tokenizer (what tokenizer.json holds).

Two vocabulary kinds, as llama.cpp writes them (tokenizer.ggml.model):
- "gpt2": byte-level BPE with merges (Llama 3, Qwen2/3, Mistral's Tekken); the pre-split regex
  follows tokenizer.ggml.pre.
- "llama": SentencePiece BPE with scores and byte-fallback tokens (Llama 2, Mistral, Gemma); the
  merges are rebuilt from the scores (a merge's rank is its result's score).
Control tokens become special added tokens; user-defined ones plain added tokens.
"""

from __future__ import annotations

import logging
from typing import Any

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers import models as tok_models

from ember.errors import ModelLoadError

# llama.cpp's token types.
_CONTROL = 3
_USER_DEFINED = 4

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
# Mistral's Tekken (Nemo, Small 3, Ministral): no contractions, a word splits where lower case
# turns to upper ("HelloWorld" -> "Hello", "World"), single digits, "/" ends a punctuation run.
_UPPERISH = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
_LOWERISH = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_TEKKEN_SPLIT = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPERISH}*{_LOWERISH}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPERISH}+{_LOWERISH}*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {
    "llama-bpe": _LLAMA3_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "tekken": _TEKKEN_SPLIT,
}
# Pre-tokenizer names whose split is GPT-2's own (ByteLevel's regex).
_GPT2_SPLITS = frozenset({"", "default", "gpt-2", "gpt2"})

log = logging.getLogger(__name__)


def tokenizer_from_gguf(meta: dict[str, Any]) -> Tokenizer:
    """meta: the file's tokenizer.ggml.* values (keys without the prefix)."""
    kind = meta.get("model")
    tokens: list[str] = list(meta.get("tokens") or [])
    if not tokens:
        raise ModelLoadError("the GGUF file holds no tokenizer vocabulary (tokenizer.ggml.tokens)")
    types: list[int] = list(meta.get("token_type") or [1] * len(tokens))
    if kind == "gpt2":
        tokenizer = _byte_level_bpe(tokens, list(meta.get("merges") or []), meta.get("pre"))
    elif kind == "llama":
        scores = [float(s) for s in meta.get("scores") or [0.0] * len(tokens)]
        unk = meta.get("unknown_token_id")
        tokenizer = _sentencepiece_bpe(
            tokens, scores, unk, meta.get("add_space_prefix") is not False
        )
    else:
        raise ModelLoadError(
            f"GGUF tokenizer model '{kind}' is not supported; supported: gpt2, llama"
        )
    tokenizer.add_tokens(
        [
            AddedToken(tok, special=False, normalized=False)
            for tok, t in zip(tokens, types, strict=True)
            if t == _USER_DEFINED
        ]
    )
    tokenizer.add_special_tokens(
        [
            AddedToken(tok, special=True, normalized=False)
            for tok, t in zip(tokens, types, strict=True)
            if t == _CONTROL
        ]
    )
    bos = meta.get("bos_token_id")
    add_bos = meta.get("add_bos_token")
    if (kind == "llama" if add_bos is None else add_bos) and bos is not None:
        bos_tok = tokens[bos]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos_tok} $A",
            pair=f"{bos_tok} $A {bos_tok} $B",
            special_tokens=[(bos_tok, bos)],
        )
    return tokenizer


def _byte_level_bpe(tokens: list[str], merges: list[str], pre: str | None) -> Tokenizer:
    vocab = {tok: i for i, tok in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    model = tok_models.BPE(
        vocab=vocab,
        merges=[(a, b) for a, b in pairs],
        ignore_merges=pre in ("llama-bpe", "llama3"),
    )
    tokenizer = Tokenizer(model)
    split = _SPLITS.get(pre or "")
    if split is None:
        if (pre or "") not in _GPT2_SPLITS:
            log.warning(
                "GGUF pre-tokenizer '%s' is not one ember knows (%s); splitting text as GPT-2 "
                "does instead, so prompts may not tokenize as the model was trained: serve the "
                "model's safetensors checkpoint for exact tokenization",
                pre,
                ", ".join(sorted(_SPLITS)),
            )
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_bpe(
    tokens: list[str], scores: list[float], unk: int | None, add_space_prefix: bool
) -> Tokenizer:
    vocab = {tok: i for i, tok in enumerate(tokens)}
    model = tok_models.BPE(
        vocab=vocab,
        merges=_merges_from_scores(vocab, scores),
        unk_token=tokens[unk] if unk is not None else None,
        byte_fallback=True,
        fuse_unk=True,
    )
    tokenizer = Tokenizer(model)
    replace = normalizers.Replace(" ", "\u2581")
    if add_space_prefix:
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), replace])
    else:
        tokenizer.normalizer = replace
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def _merges_from_scores(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    # SentencePiece merges the pair whose result scores highest; ties go to shorter pieces.
    found: list[tuple[float, int, int, str, str]] = []
    for piece, index in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                found.append((-scores[index], vocab[left], vocab[right], left, right))
    found.sort()
    return [(left, right) for _, _, _, left, right in found]
