"""gpu_check --section overlap: would splitting a 256-row decode step into two micro-batches, one's
attention running beside the other's matmuls, pay?

At 256 rows a Llama-8B decode layer is ~180 µs of attention (HBM-bound, ~3.8 TB/s) then ~188 µs
of matmuls (compute-bound, ~600 TFLOP/s), one after the other. With two micro-batches of 128,
micro-batch A's attention could run on a second stream while B's matmuls run, each layer then
costing about two overlapped halves instead of the sum. This section measures, per layer,
graph-replayed, 640 keys a sequence, weights and KV rotated past L2:

- today's layer: attention over 256 sequences, then the four projections at 256 rows;
- each half alone: attention over 128, the projections at 128 rows;
- the halves overlapped: attention(128) on the main stream and projections(128) on a side stream
  forked and joined inside the graph, with the side stream at default and at high priority.

Two overlapped halves per layer against today's layer is the pipelined step's best case (it
ignores the dependency bubbles at the first and last layer).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

from scripts.gpu_blas_check import LAYER_SHAPES, rotated_weights

Fn = Callable[[], None]
CTX = 640


def _matmuls(rows: int) -> list[Fn]:
    """One layer's four projections at `rows` rows, one call per set of weights (each
    projection's copies cycled, past L2)."""
    ws = [rotated_weights(n, k, 1 / 64) for _, n, k in LAYER_SHAPES]
    inputs = {
        k: torch.randn(rows, k, dtype=torch.bfloat16, device="cuda") for _, _, k in LAYER_SHAPES
    }
    pairs = [(inputs[k], copies) for (_, _, k), copies in zip(LAYER_SHAPES, ws, strict=True)]

    def call(i: int) -> Fn:
        def run() -> None:
            for x, copies in pairs:
                F.linear(x, copies[i % len(copies)])

        return run

    return [call(i) for i in range(max(len(c) for c in ws))]


def _attention(batch: int) -> list[Fn]:
    from scripts.gpu_check import decode_calls, decode_setup

    setup = decode_setup(batch, CTX)
    out = torch.empty_like(setup.qs[0])
    return decode_calls(setup, out, None, None)


def _overlapped(attn: list[Fn], mm: list[Fn], side: torch.cuda.Stream) -> list[Fn]:
    """attn[i] on the current stream beside mm[i % len(mm)] on `side`, joined after both."""

    def call(i: int) -> Fn:
        def run() -> None:
            main = torch.cuda.current_stream()
            side.wait_stream(main)
            with torch.cuda.stream(side):
                mm[i % len(mm)]()
            attn[i]()
            main.wait_stream(side)

        return run

    return [call(i) for i in range(len(attn))]


def section_overlap(args: argparse.Namespace) -> bool:
    from scripts.gpu_check import time_us

    full_attn, half_attn = _attention(256), _attention(128)
    full_mm, half_mm = _matmuls(256), _matmuls(128)
    rows = [
        ("attention, 256 sequences", time_us(full_attn)),
        ("projections, 256 rows", time_us(full_mm)),
        ("attention, 128 sequences", time_us(half_attn)),
        ("projections, 128 rows", time_us(half_mm)),
    ]
    today = rows[0][1] + rows[1][1]
    halves = rows[2][1] + rows[3][1]
    for priority, label in ((0, "default"), (-1, "high")):
        side = torch.cuda.Stream(priority=priority)
        us = time_us(_overlapped(half_attn, half_mm, side))
        rows.append((f"attention(128) || projections(128), side stream {label} priority", us))
    print(f"{'per layer, 640 keys a sequence':<62} {'us':>8}")
    for name, us in rows:
        print(f"{name:<62} {us:>8.1f}")
    best = min(us for _, us in rows[4:])
    print(f"today's layer (attention 256 + projections 256): {today:.1f} us")
    print(f"two halves in a row: {2 * halves:.1f} us; two overlapped halves: {2 * best:.1f} us")
    print(f"overlapped pipeline / today's layer: {2 * best / today:.2f}")
    return True
