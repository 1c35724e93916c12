"""gemv_triton's argument checks and tile choice, which run before any kernel (no Triton in CI):
the batch-1 GEMVs take one row, and every misuse is a ValueError that says what is wrong."""

from __future__ import annotations

import pytest
import torch

from ember.ops.triton_gemv import (
    PRE_ADD_RMSNORM,
    PRE_NONE,
    PRE_RMSNORM,
    PRE_SILU_MUL,
    gemv_config,
    gemv_triton,
)

W = torch.zeros(8, 16)


@pytest.mark.parametrize(
    ("x", "kwargs", "message"),
    [
        (torch.zeros(2, 16), {}, "at most 1 row"),
        (torch.zeros(1, 15), {}, "does not fit weight"),
        (torch.zeros(1, 16), {"pre": PRE_SILU_MUL}, "does not fit weight"),
        (torch.zeros(1, 16), {"pre": PRE_RMSNORM}, "needs norm_weight"),
        (
            torch.zeros(1, 16),
            {"pre": PRE_ADD_RMSNORM, "norm_weight": torch.ones(16)},
            "needs residual and residual_out",
        ),
    ],
)
def test_misuse_is_a_clear_error(x: torch.Tensor, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gemv_triton(x, W, **kwargs)


def test_the_residual_stream_is_written_out_of_place() -> None:
    res = torch.zeros(1, 16)
    with pytest.raises(ValueError, match="must not be residual"):
        gemv_triton(
            torch.zeros(1, 16), W, pre=PRE_ADD_RMSNORM, norm_weight=torch.ones(16),
            residual=res, residual_out=res,
        )  # fmt: skip
    with pytest.raises(ValueError, match="contiguous last dim"):
        gemv_triton(torch.zeros(1, 16), torch.zeros(16, 8).t())


def test_tiles_follow_the_sweeps() -> None:
    assert gemv_config(PRE_RMSNORM, 6144) == gemv_config(PRE_ADD_RMSNORM, 28672) == (16, 512, 8)
    assert gemv_config(PRE_SILU_MUL, 4096) == gemv_config(PRE_NONE, 4096) == (8, 1024, 4)
    assert gemv_config(PRE_NONE, 6144) == (4, 1024, 4)
