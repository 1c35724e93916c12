"""The `argmax` section of gpu_check.py: greedy sampling's argmax over a step's logits: torch's
argmax over float32 (the cast first, as `Sampler.sample_tokens` did before 2026-12-04), over the
bf16 logits directly, two-stage (`chunked_argmax` below: measured, not used; the engine's
batch-1 decode did not move with it), and ember's one-launch Triton argmax (ops/triton_argmax.py,
the decode graphs' and the greedy sampler's since 2026-12-04) over the float32 logits the model
returns. Every variant must return torch's first maximal index, ties included.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from ember.ops.triton_argmax import argmax_triton

VOCABS = (128256, 151936, 262208)
BATCHES = (1, 8, 64, 256)


def chunked_argmax(logits: torch.Tensor, chunks: int = 64) -> torch.Tensor:
    """logits.argmax(-1) in two passes: each row cut into `chunks` pieces, each piece's maximum
    and its first index, then the first piece holding the row's maximum."""
    rows, vocab = logits.shape
    assert vocab % chunks == 0
    width = vocab // chunks
    best, where = logits.view(rows, chunks, width).max(dim=-1)
    chunk = best.argmax(dim=-1, keepdim=True)
    return (where.gather(1, chunk) + chunk * width).squeeze(1)


def _variants(logits: torch.Tensor) -> list[Callable[[], torch.Tensor]]:
    as_float = logits.float()
    out = torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)
    return [
        lambda: logits.float().argmax(-1),
        lambda: logits.argmax(-1),
        lambda: chunked_argmax(logits),
        lambda: argmax_triton(as_float, out),
    ]


def section_argmax(args: argparse.Namespace) -> bool:
    from scripts.gpu_check import time_us

    ok = True
    print(
        f"{'vocab':>7} {'rows':>5} {'fp32 argmax':>12} {'bf16 argmax':>12} {'chunked':>9} "
        f"{'ember fp32':>11}  same"
    )
    for vocab in VOCABS:
        for rows in BATCHES:
            logits = torch.randn(rows, vocab, device="cuda", dtype=torch.bfloat16)
            logits[:, vocab // 3] = 8.0  # ties: the first of them must win
            logits[:, 2 * vocab // 3] = 8.0
            logits[0, -1] = 9.0
            want = logits.float().argmax(-1)
            same = torch.equal(logits.argmax(-1), want) and torch.equal(
                chunked_argmax(logits), want
            )
            for _ in range(3):  # again: each launch must leave its counters zero
                out = torch.full_like(want, -1)
                same &= torch.equal(argmax_triton(logits.float(), out), want)
            ok &= same
            t = [time_us([fn]) for fn in _variants(logits)]
            print(
                f"{vocab:>7} {rows:>5} {t[0]:>10.1f}us {t[1]:>10.1f}us {t[2]:>7.1f}us "
                f"{t[3]:>9.1f}us  " + ("PASS" if same else "FAIL")
            )
    return ok
