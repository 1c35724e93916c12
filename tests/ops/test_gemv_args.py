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


class _Hidden:
    """What small_batch.applies looks at in a step's hidden states, without a GPU."""

    is_cuda = True
    device = torch.device("cuda", 0)

    def __init__(self, rows: int) -> None:
        self.shape = (rows, 16)

    def dim(self) -> int:
        return 2


@pytest.mark.parametrize(
    ("setting", "hopper", "expected"),
    [(None, True, True), (None, False, False), (True, False, True), (False, True, False)],
)
def test_fused_gemvs_by_default_on_hopper_only(
    monkeypatch: pytest.MonkeyPatch, setting: bool | None, hopper: bool, expected: bool
) -> None:
    from ember.layers import small_batch

    monkeypatch.setattr(small_batch, "ENABLED", setting)
    monkeypatch.setattr(small_batch, "use_triton", lambda device: True)
    monkeypatch.setattr(small_batch, "hopper_or_later", lambda device: hopper)
    assert small_batch.applies(_Hidden(1)) is expected  # type: ignore[arg-type]
    assert not small_batch.applies(_Hidden(2))  # type: ignore[arg-type]
