from __future__ import annotations

import random
from pathlib import Path

import pytest

from ember.tokenizer import IncrementalDetokenizer, Tokenizer

MULTILINGUAL = (
    "Café crème brûlée, naïve señor! 東京は日本の首都です。서울은 한국의 수도입니다. "
    "Emoji 😀🚀 👍🏽 🇫🇷 and rare ☃ 𝄞 glyphs.\n\tdef f(x):  return x  "
)


def byte_token(tk: Tokenizer, byte: int) -> int:
    token_id = tk.token_to_id(f"<0x{byte:02X}>")
    assert token_id is not None
    return token_id


def stream(detok: IncrementalDetokenizer, ids: list[int], rng: random.Random) -> list[str]:
    """Feeds `ids` in random chunks of 1-3 tokens, as a scheduler with speculative or multi-step
    decoding might; returns every piece including the flush."""
    pieces: list[str] = []
    i = 0
    while i < len(ids):
        n = rng.randint(1, 3)
        pieces.append(detok.add(ids[i : i + n]))
        i += n
    pieces.append(detok.flush())
    return pieces


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_random_ids_concatenate_to_decode(
    any_tokenizer_dir: Path, skip_special_tokens: bool
) -> None:
    tk = Tokenizer.from_dir(any_tokenizer_dir)
    rng = random.Random(1234)
    for _ in range(300):
        ids = [rng.randrange(tk.vocab_size) for _ in range(rng.randint(1, 60))]
        detok = IncrementalDetokenizer(tk, skip_special_tokens=skip_special_tokens)
        pieces = stream(detok, ids, rng)
        assert "".join(pieces) == tk.decode(ids, skip_special_tokens=skip_special_tokens), ids
        assert detok.text == "".join(pieces)


def test_byte_runs_around_special_tokens(byte_fallback_dir: Path) -> None:
    # Random ids rarely line up bytes around specials; draw from those tokens on purpose.
    tk = Tokenizer.from_dir(byte_fallback_dir)
    pool = sorted(tk.byte_fallback_ids) + sorted(tk.all_special_ids) + list(range(60))
    rng = random.Random(7)
    for _ in range(500):
        ids = [rng.choice(pool) for _ in range(rng.randint(1, 30))]
        for skip in (True, False):
            pieces = stream(IncrementalDetokenizer(tk, skip), ids, rng)
            assert "".join(pieces) == tk.decode(ids, skip_special_tokens=skip), ids


def test_streamed_text_never_shows_partial_characters(any_tokenizer_dir: Path) -> None:
    tk = Tokenizer.from_dir(any_tokenizer_dir)
    ids = tk.encode(MULTILINGUAL)
    expected = tk.decode(ids)
    detok = IncrementalDetokenizer(tk)
    pieces = [detok.add([i]) for i in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == expected
    if "\ufffd" not in expected:
        assert all("\ufffd" not in p for p in pieces)


def test_multibyte_text_round_trips_exactly(byte_level_dir: Path) -> None:
    tk = Tokenizer.from_dir(byte_level_dir)
    ids = tk.encode(MULTILINGUAL, add_special_tokens=False)
    detok = IncrementalDetokenizer(tk)
    text = "".join(detok.add([i]) for i in ids)
    assert detok.flush() == ""
    assert text == MULTILINGUAL


def test_byte_fallback_character_appears_when_the_run_ends(byte_fallback_dir: Path) -> None:
    tk = Tokenizer.from_dir(byte_fallback_dir)
    han = [byte_token(tk, b) for b in "中".encode()]
    detok = IncrementalDetokenizer(tk)
    assert [detok.add([i]) for i in han] == ["", "", ""]
    word = tk.encode("river", add_special_tokens=False)
    assert detok.add(word) == tk.decode(han + word) == "中 river"
    assert detok.flush() == ""


def test_spaces_between_sentencepiece_tokens_survive(sentencepiece_dir: Path) -> None:
    tk = Tokenizer.from_dir(sentencepiece_dir)
    text = "the river runs past the old mill"
    ids = tk.encode(text)
    detok = IncrementalDetokenizer(tk)
    pieces = [detok.add([i]) for i in ids]
    assert "".join(pieces) + detok.flush() == text
    assert sum(p.startswith(" ") for p in pieces) == text.count(" ")


def test_special_tokens_are_shown_only_when_asked(byte_level_dir: Path) -> None:
    tk = Tokenizer.from_dir(byte_level_dir)
    eot = tk.token_to_id("<|eot_id|>")
    assert eot is not None
    ids = [*tk.encode("done", add_special_tokens=False), eot]
    shown = IncrementalDetokenizer(tk, skip_special_tokens=False)
    hidden = IncrementalDetokenizer(tk)
    assert "".join(shown.add([i]) for i in ids) + shown.flush() == "done<|eot_id|>"
    assert "".join(hidden.add([i]) for i in ids) + hidden.flush() == "done"


def test_each_step_decodes_a_short_window(byte_level_dir: Path) -> None:
    tk = Tokenizer.from_dir(byte_level_dir)
    widths: list[int] = []
    decode = tk.decode

    def recording_decode(ids: list[int], skip_special_tokens: bool = True) -> str:
        widths.append(len(ids))
        return decode(ids, skip_special_tokens)

    tk.decode = recording_decode  # type: ignore[method-assign]
    ids = tk.encode(MULTILINGUAL * 40, add_special_tokens=False)
    detok = IncrementalDetokenizer(tk)
    for i in ids:
        detok.add([i])
    assert len(ids) > 2000
    assert max(widths) <= 8
    assert len(widths) <= 2 * len(ids)
