"""Range-checked number types for argparse (`type=`): a bad value is an argparse error, exit 2,
naming the flag and the range (`argument --port: must be an integer in 1..65535, got 0`), as
`ember serve` reports its settings."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer >= low (and <= high where given)."""
    wanted = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"

    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {raw!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {value}")
        return value

    return parse


def number(low: float = 0.0, *, strict: bool = False) -> Callable[[str], float]:
    """A finite number >= low, or > low when `strict`."""
    wanted = f"a number {'>' if strict else '>='} {low:g}"

    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {raw!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {raw.strip()}")
        return value

    return parse


def integer_list(low: int) -> Callable[[str], list[int]]:
    """Comma-separated integers, each >= low: at least one, sorted, each once."""
    one = integer(low)

    def parse(raw: str) -> list[int]:
        parts = [x for x in raw.split(",") if x.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(
                f"must be comma-separated integers >= {low}, got {raw!r}"
            )
        return sorted({one(x) for x in parts})

    return parse
