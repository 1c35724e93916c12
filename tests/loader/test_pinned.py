"""Pinned host memory for the ring (pinned.py): the block, its registration and unregistration,
and the fallback to cudaHostAlloc, with CUDA's calls replaced (there is no GPU in CI)."""

from __future__ import annotations

import gc
import logging

import pytest
import torch

from ember.loader import pinned

MiB = 1 << 20


@pytest.fixture
def cuda_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[object]]:
    calls: dict[str, list[object]] = {"register": [], "unregister": [], "host_alloc": []}

    def register(ptr: int, nbytes: int) -> None:
        calls["register"].append((ptr, nbytes))

    def unregister(ptr: int) -> None:
        calls["unregister"].append(ptr)

    def host_alloc(nbytes: int) -> torch.Tensor:
        calls["host_alloc"].append(nbytes)
        return torch.empty(nbytes, dtype=torch.uint8)

    monkeypatch.setattr(pinned, "register", register)
    monkeypatch.setattr(pinned, "unregister", unregister)
    monkeypatch.setattr(pinned, "host_alloc", host_alloc)
    monkeypatch.setattr(pinned, "_warned", type(pinned._warned)())
    monkeypatch.delenv("EMBER_PIN_REGISTER", raising=False)
    return calls


@pytest.mark.parametrize("populate", ["madvise", "touch"])
def test_a_registered_block_is_huge_page_aligned_zeroed_and_writable(
    cuda_calls: dict[str, list[object]], populate: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if populate == "touch":  # a kernel without MADV_POPULATE_WRITE: one byte a page is written
        monkeypatch.setattr(pinned, "_MADV_POPULATE_WRITE", 0x7FFF)
    block = pinned.pinned_host(3 * MiB + 4096)
    assert block.dtype == torch.uint8 and block.numel() == 3 * MiB + 4096
    assert block.data_ptr() % pinned.HUGE_PAGE == 0
    assert cuda_calls["register"] == [(block.data_ptr(), 3 * MiB + 4096)]
    assert int(block.count_nonzero()) == 0
    block[-1] = 7
    assert int(block[-1]) == 7


def test_registered_memory_is_unregistered_when_the_block_goes(
    cuda_calls: dict[str, list[object]],
) -> None:
    block = pinned.pinned_host(2 * MiB)
    ptr = block.data_ptr()
    assert cuda_calls["register"] == [(ptr, 2 * MiB)] and not cuda_calls["host_alloc"]
    views = [memoryview(block.numpy().data), block[MiB:]]  # as the ring and the copies hold it
    del block
    gc.collect()
    assert cuda_calls["unregister"] == []
    views.pop()
    gc.collect()
    assert cuda_calls["unregister"] == []
    views.pop()
    gc.collect()
    assert cuda_calls["unregister"] == [ptr]


def test_a_failed_registration_falls_back_to_cuda_host_alloc_and_warns_once(
    cuda_calls: dict[str, list[object]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(ptr: int, nbytes: int) -> None:
        raise RuntimeError("cudaHostRegister returned cudaErrorNotSupported")

    monkeypatch.setattr(pinned, "register", refuse)
    with caplog.at_level(logging.WARNING, logger="ember.loader.pinned"):
        for _ in range(3):
            assert pinned.pinned_host(MiB).numel() == MiB
    assert cuda_calls["host_alloc"] == [MiB] * 3
    warnings = [r for r in caplog.records if "cudaHostAlloc" in r.getMessage()]
    assert len(warnings) == 1 and "cudaErrorNotSupported" in warnings[0].getMessage()


def test_registration_can_be_turned_off(
    cuda_calls: dict[str, list[object]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBER_PIN_REGISTER", "0")
    pinned.pinned_host(MiB)
    assert cuda_calls["host_alloc"] == [MiB] and not cuda_calls["register"]
