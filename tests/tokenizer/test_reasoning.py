"""<think>...</think> split from replies: vLLM's reasoning parsers (text as written; a reply cut
before </think> is all reasoning) and Ollama's thinking (whitespace trimmed)."""

from __future__ import annotations

import pytest

from ember.tokenizer.reasoning import Start, ThinkSplitter, prompt_start, split_reasoning

REPLY = "<think>\nI should greet.\n</think>\n\nHello there!"


def streamed(pieces: list[str], start: Start, trim: bool) -> tuple[str, str]:
    splitter = ThinkSplitter(start, trim)
    reasoning, content = "", ""
    for piece in [*pieces, None]:
        r, c = splitter.feed(piece) if piece is not None else splitter.flush()
        reasoning, content = reasoning + r, content + c
    return reasoning, content


@pytest.mark.parametrize(
    "pieces",
    [[REPLY], list(REPLY), ["<th", "ink>\nI sh", "ould greet.\n</", "think>\n", "\nHello there!"]],
)
def test_split_whole_or_streamed_is_the_same(pieces: list[str]) -> None:
    assert streamed(pieces, Start.THINKING, False) == ("\nI should greet.\n", "\n\nHello there!")
    assert streamed(pieces, Start.OPEN_TAG, True) == ("I should greet.", "Hello there!")


def test_only_the_closing_tag_in_output() -> None:
    """Templates that open <think> in the prompt (DeepSeek-R1, Qwen3.5)."""
    text = "Because.\n</think>\n\nAnswer."
    assert split_reasoning(text, Start.THINKING) == ("Because.\n", "\n\nAnswer.")
    assert split_reasoning(text, Start.THINKING, trim=True) == ("Because.", "Answer.")


def test_no_closing_tag() -> None:
    assert split_reasoning("still thinking", Start.THINKING) == ("still thinking", "")
    assert split_reasoning("<think>cut sh", Start.THINKING) == ("cut sh", "")
    assert split_reasoning("plain answer", Start.CONTENT) == ("", "plain answer")
    assert split_reasoning("plain answer", Start.OPEN_TAG, trim=True) == ("", "plain answer")


def test_where_the_prompt_leaves_the_reply() -> None:
    assert prompt_start("<|im_start|>assistant\n", Start.THINKING) is Start.THINKING
    assert prompt_start("<|im_start|>assistant\n<think>\n", Start.OPEN_TAG) is Start.THINKING
    assert prompt_start("assistant\n<think>\n\n</think>\n\n", Start.THINKING) is Start.CONTENT
    assert prompt_start(None, Start.OPEN_TAG) is Start.OPEN_TAG


def test_ollama_trims_thinking_whitespace_across_deltas() -> None:
    pieces = ["<think>", "  ", "a b ", "\n", "</think>", "\n\n", "x ", "y"]
    assert streamed(pieces, Start.OPEN_TAG, True) == ("a b", "x y")
