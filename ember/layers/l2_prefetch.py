"""Batch-1 decode: pull the o projection's weight into L2 while attention runs.

At a few rows a step, a layer's attention (rotary + KV store, attention, split merge) reads a few
MB in ~10 µs and leaves the HBM mostly idle; the o projection after it reads its whole weight
(32 MiB for Llama-8B) from HBM. `start` launches ops.triton_prefetch on a side stream that forks
from the current one (inside a CUDA graph this becomes a parallel branch), so the weight streams
into L2 beside attention; `join` makes the current stream wait for it before the matmul.

EMBER_L2_PREFETCH selects the prefetch instruction: `bulk` (cp.async.bulk.prefetch, sm_90+),
`line` (prefetch.global.L2::evict_last) or `off` (default until it measures faster; see
docs/benchmarks.md). Steps of more than MAX_ROWS rows, the CPU and Triton-less installs never
prefetch.
"""

from __future__ import annotations

import os
from functools import cache

import torch

from ember.ops import use_triton

MAX_ROWS = 8
_MODES = ("off", "bulk", "line")


def mode() -> str:
    value = os.environ.get("EMBER_L2_PREFETCH", "off").strip().lower() or "off"
    if value not in _MODES:
        raise ValueError(f"EMBER_L2_PREFETCH={value!r}: use one of {', '.join(_MODES)}")
    return value


MODE = mode()


@cache
def _side_stream(device: torch.device) -> torch.cuda.Stream:
    return torch.cuda.Stream(device)


def start(weight: torch.Tensor, x: torch.Tensor) -> torch.cuda.Stream | None:
    """Begin pulling `weight` into L2 on a side stream when step input `x` [T, ...] is small
    enough; returns the stream to `join`, or None when nothing was started."""
    if MODE == "off" or not x.is_cuda or x.shape[0] > MAX_ROWS or not use_triton(x.device):
        return None
    from ember.ops.triton_prefetch import MODES, l2_prefetch

    current = torch.cuda.current_stream(x.device)
    side = _side_stream(x.device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        l2_prefetch(weight, MODES[MODE])
    return side


def join(side: torch.cuda.Stream | None) -> None:
    """The current stream waits for the prefetch begun by `start` (nothing when it was None)."""
    if side is not None:
        torch.cuda.current_stream(side.device).wait_stream(side)
