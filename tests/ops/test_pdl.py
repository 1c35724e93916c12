"""When the decode-path kernels launch with programmatic dependent launch (triton_kv.pdl_enabled):
on a CUDA device of compute capability 9.0 or later, with a Triton that has it, unless
EMBER_PDL=0; never on the CPU (nor under Triton's interpreter)."""

from __future__ import annotations

import pytest
import torch

from ember.ops import triton_kv


@pytest.fixture
def capable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_kv, "gdc_wait", object())
    monkeypatch.setattr(triton_kv, "_capability_major", lambda index: 9 if index == 0 else 8)


def test_pdl_on_a_capable_cuda_device_unless_turned_off(
    capable: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cuda0, cuda1 = torch.device("cuda", 0), torch.device("cuda", 1)
    monkeypatch.setattr(triton_kv, "PDL_SETTING", False)  # EMBER_PDL=0
    assert not triton_kv.pdl_enabled(cuda0)
    monkeypatch.setattr(triton_kv, "PDL_SETTING", True)  # unset
    assert triton_kv.pdl_enabled(cuda0)
    assert not triton_kv.pdl_enabled(cuda1)  # before Hopper
    assert not triton_kv.pdl_enabled(torch.device("cpu"))
    monkeypatch.setattr(triton_kv, "gdc_wait", None)  # a Triton without it
    assert not triton_kv.pdl_enabled(cuda0)


def test_pdl_launch_option() -> None:
    assert triton_kv.pdl_launch(True) == {"launch_pdl": True}
    assert triton_kv.pdl_launch(False) == {}
