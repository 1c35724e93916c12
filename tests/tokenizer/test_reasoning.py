"""<think>...</think> split from replies: vLLM's reasoning parsers (text as written; a reply cut
before </think> is all reasoning) and Ollama's thinking (whitespace trimmed)."""

from __future__ import annotations

import pytest

from ember.tokenizer.reasoning import (
    Start,
    ThinkSplitter,
    count_reasoning_tokens,
    prompt_start,
    reply_start,
    split_reasoning,
)

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


def test_where_a_reasoning_parser_starts_the_reply() -> None:
    """The one rule of both OpenAI routes: split only free text of models that think."""
    thinks = "{% if enable_thinking %}x{% endif %}"
    assert reply_start("qwen3", thinks, False, None, "<|im_start|>assistant\n") is Start.THINKING
    assert reply_start("deepseek_r1", thinks, False, None, "a <think>\n") is Start.THINKING
    assert reply_start("qwen3", thinks, False, {"enable_thinking": False}, "a") is Start.CONTENT
    assert reply_start("deepseek_r1", thinks, False, None, "<think>\n\n</think>\n\n") is (
        Start.CONTENT
    )
    assert reply_start(None, thinks, False, None, "a") is None  # no --reasoning-parser
    assert reply_start("qwen3", thinks, True, None, "a") is None  # a grammar shapes the output
    assert reply_start("qwen3", "{{ messages }}", False, None, "a") is None  # a model that can't


OPEN, CLOSE = 7, 8  # the tags' token ids


@pytest.mark.parametrize(
    ("ids", "start", "closed", "count"),
    [
        ([OPEN, 1, 2, CLOSE, 3, 0], Start.THINKING, True, 2),  # the reply opens <think>
        ([1, 2, 2, CLOSE, 3], Start.THINKING, True, 3),  # the prompt opened it
        ([OPEN, 1, 2], Start.THINKING, False, 2),  # cut short inside
        ([1, 2], Start.CONTENT, True, 0),  # thinking turned off
        ([OPEN, 1, 4, 5], Start.THINKING, True, 0),  # </think> in pieces: not exact
    ],
)
def test_reasoning_tokens_as_vllm_counts_them(
    ids: list[int], start: Start, closed: bool, count: int
) -> None:
    assert count_reasoning_tokens(ids, start, closed, OPEN, CLOSE) == count


def test_reasoning_tokens_unknown_when_a_tag_is_not_one_token() -> None:
    assert count_reasoning_tokens([1, 2, CLOSE], Start.THINKING, True, None, CLOSE) == 0
