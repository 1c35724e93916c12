"""Host lists to device tensors without waiting for the GPU."""

from __future__ import annotations

import torch


def upload(
    values: list[int] | list[float] | list[bool], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """`values` as a tensor on `device`. On CUDA the copy goes through pinned memory and is
    queued on the current stream, so it does not wait for the work already queued there (a
    plain torch.tensor(..., device="cuda") from pageable memory waits for the whole stream,
    which would undo async scheduling's overlap)."""
    t = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
