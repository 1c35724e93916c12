"""Streaming detokenization: text for each new token, with the same total as one decode().

Decoding tokens one at a time is wrong in three ways: a token may end inside a multi-byte UTF-8
character, SentencePiece decoders drop the space of whichever token comes first, and byte-fallback
runs (<0xE4><0xB8><0xAD>) only become text together. So each step decodes a short window of
tokens that starts at an already-emitted, character-aligned token and returns the text past what
was emitted from that window.

Invariants:
- `_start <= _read <= len(_ids)`; `_read` ends a run of tokens whose text is fully emitted and
  that ends on a character boundary; `_start` is the previous such point, kept as context.
- `_emitted` counts the characters of decode(_ids[_start:...]) already returned.
- A trailing U+FFFD is held back: in byte-level decoding only the last one can still turn into a
  character once the next bytes arrive. A trailing run of <0xNN> tokens is held back entirely:
  one more byte can turn the whole run into U+FFFDs (see tokenizers' ByteFallback decoder).
"""

from __future__ import annotations

from ember.tokenizer.tokenizer import Tokenizer

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        # Tokens that may continue a trailing byte run: skipped special tokens vanish before the
        # decoder sees the bytes around them, so they join the run.
        self._run_ids = tokenizer.byte_fallback_ids
        if self._run_ids and skip_special_tokens:
            self._run_ids = self._run_ids | tokenizer.all_special_ids
        self._ids: list[int] = []
        self._start = 0
        self._read = 0
        self._emitted = 0
        self._pieces: list[str] = []
        self._text: str | None = ""

    @property
    def text(self) -> str:
        """All text returned so far by add() and flush()."""
        if self._text is None:
            self._text = "".join(self._pieces)
        return self._text

    @property
    def token_ids(self) -> list[int]:
        return list(self._ids)

    def _decode(self, start: int, end: int) -> str:
        return self._tokenizer.decode(
            self._ids[start:end], skip_special_tokens=self._skip_special_tokens
        )

    def _stable_end(self) -> int:
        end = len(self._ids)
        if self._run_ids:
            while end > self._read and self._ids[end - 1] in self._run_ids:
                end -= 1
        return end

    def _emit(self, piece: str) -> str:
        if piece:
            self._pieces.append(piece)
            self._text = None
        return piece

    def add(self, token_ids: list[int]) -> str:
        """Feed newly generated tokens; returns the text they complete (possibly "")."""
        self._ids.extend(token_ids)
        end = self._stable_end()
        if end <= self._read:
            return ""
        window = self._decode(self._start, end)
        cut = len(window) - 1 if window.endswith(_REPLACEMENT) else len(window)
        if cut <= self._emitted:
            return ""
        piece = window[self._emitted : cut]
        if cut == len(window):
            # Clean end: slide the window so its cost stays bounded by the last few tokens.
            self._start, self._read = self._read, end
            self._emitted = len(self._decode(self._start, end))
        else:
            self._emitted = cut
        return self._emit(piece)

    def flush(self) -> str:
        """The text still held back; call once at the end of the sequence."""
        end = len(self._ids)
        if end == self._read:
            return ""
        window = self._decode(self._start, end)
        piece = window[self._emitted :]
        self._read = end
        self._emitted = len(window)
        return self._emit(piece)
