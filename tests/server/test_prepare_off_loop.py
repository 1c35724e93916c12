"""Long prompts are templated and tokenized off the event loop, so they never stall streams."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from ember.server.context import PREPARE_INLINE_BYTES, prepare_request


class _Body:
    def __init__(self, size: int) -> None:
        self._raw = b"x" * size

    async def body(self) -> bytes:
        return self._raw


def _where(size: int) -> str:
    def prepare(engine: Any) -> Any:
        return threading.current_thread().name

    async def main() -> tuple[str, str]:
        loop_thread = threading.current_thread().name
        ran_in = await prepare_request(_Body(size), prepare, object())  # type: ignore[arg-type]
        return loop_thread, ran_in

    loop_thread, ran_in = asyncio.run(main())
    return "loop" if ran_in == loop_thread else "worker"


def test_short_prompts_are_prepared_inline() -> None:
    assert _where(1000) == "loop"


def test_long_prompts_are_prepared_on_a_worker_thread() -> None:
    assert _where(PREPARE_INLINE_BYTES + 1) == "worker"


def test_errors_from_a_worker_reach_the_caller() -> None:
    def prepare(engine: Any) -> Any:
        raise ValueError("bad prompt")

    async def main() -> None:
        await prepare_request(_Body(PREPARE_INLINE_BYTES * 2), prepare, object())  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="bad prompt"):
        asyncio.run(main())
