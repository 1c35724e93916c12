"""The Triton argmax (ops/triton_argmax.py, the decode graphs' greedy tokens) on CPU under
Triton's interpreter: the same index as torch's argmax for rows narrower and wider than a
program's part, ties (the first wins), -inf rows, NaN, and several launches in a row (each must
leave its arrival counters zero for the next). Skipped where Triton is not installed (CI)."""

from __future__ import annotations

from tests.ops.test_triton_interpreter import (  # noqa: F401 (pytestmark: the same skips)
    pytestmark,
    run_interpreted,
)

_CHECK = r"""
import torch
from ember.ops.triton_argmax import BLOCK, argmax_triton

torch.manual_seed(0)
for rows, width in ((1, 5), (3, BLOCK), (2, 2 * BLOCK + 7), (5, 3 * BLOCK - 1)):
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(rows, width).to(dtype)
        if width > 10:
            x[0, width // 2] = x[0, width - 3] = 50.0  # a tie across parts: the first wins
            x[-1, :] = float("-inf")  # all -inf: index 0
        if rows > 2:
            x[1, width - 1] = float("nan")  # NaN: the largest
        out = torch.full((rows,), -1, dtype=torch.int64)
        got = argmax_triton(x, out)
        want = x.float().argmax(-1)
        assert torch.equal(got, want), (rows, width, dtype, got, want)
from ember.ops.triton_kv import arrival_counts
assert not arrival_counts(torch.device("cpu"), "argmax", 1).any()  # left zero for the next
print("ok")
"""


def test_argmax_kernel_matches_torch() -> None:
    run_interpreted(_CHECK)
