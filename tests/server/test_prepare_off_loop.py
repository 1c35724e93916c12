"""Prompts are templated and tokenized off the event loop, and a long one lets go of the GIL
while it is encoded, so that it never stalls the streams the loop serves."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ember.registry import ModelStore, default_home
from ember.server.context import prepare_request
from ember.tokenizer import Tokenizer


def test_prompts_are_prepared_on_a_worker_thread() -> None:
    def prepare(engine: Any) -> Any:
        return threading.current_thread().name

    async def main() -> tuple[str, str]:
        return threading.current_thread().name, await prepare_request(prepare, object())  # type: ignore[arg-type]

    loop_thread, ran_in = asyncio.run(main())
    assert ran_in != loop_thread


def test_errors_from_a_worker_reach_the_caller() -> None:
    def prepare(engine: Any) -> Any:
        raise ValueError("bad prompt")

    with pytest.raises(ValueError, match="bad prompt"):
        asyncio.run(prepare_request(prepare, object()))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    path: Path = ModelStore(default_home()).resolve("tiny").path
    return Tokenizer.from_dir(path)


def test_a_long_encode_lets_other_threads_run(tokenizer: Tokenizer) -> None:
    """The event loop is such a thread: while a worker encodes a long prompt, it must go on."""
    text = "hello world " * 100_000
    short = tokenizer.encode(text[:1000])
    gaps: list[float] = []
    done = threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            time.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = threading.Thread(target=tick)
    ticker.start()
    t0 = time.perf_counter()
    ids = tokenizer.encode(text)
    took = time.perf_counter() - t0
    done.set()
    ticker.join()
    assert ids[: len(short) - 1] == short[:-1]  # the same tokens as a short encode
    assert max(gaps) < max(0.1, took / 3), (took, max(gaps))
