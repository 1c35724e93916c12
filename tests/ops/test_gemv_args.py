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
from ember.ops.triton_qkv_rotary import QKVRotary

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


def _rotary(heads: tuple[int, int, int]) -> QKVRotary:
    n_q, n_kv, dim = heads
    tables = torch.zeros(64, dim // 2)
    return QKVRotary(torch.zeros(1, dtype=torch.int64), tables, tables, n_q, n_kv, dim)


@pytest.mark.parametrize(
    ("weight_rows", "rotary", "kwargs", "message"),
    [
        (7 * 16, _rotary((4, 2, 16)), {}, "has 128 features, not 112"),
        (8 * 16, _rotary((4, 2, 16)), {"block_n": 6}, "block_n 6 must be even"),
        (8 * 16, _rotary((4, 2, 16)), {"out_dtype": torch.float64}, "in x's dtype"),
    ],
)
def test_rotary_epilogue_misuse_is_a_clear_error(
    weight_rows: int, rotary: QKVRotary, kwargs: dict, message: str
) -> None:
    """The qkv GEMV's rotary epilogue: the projection must be whole heads of q, k and v, the
    tile's rotation pairs must lie within a head, and the epilogue writes x's dtype."""
    w = torch.zeros(weight_rows, 16)
    with pytest.raises(ValueError, match=message):
        gemv_triton(torch.zeros(1, 16), w, rotary=rotary, **kwargs)
