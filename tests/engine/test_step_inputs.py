"""The decode graphs' step inputs (engine/cuda_graphs.py: StepInputs): one buffer whose used parts
go up in one or two copies. On the CPU both sides are CPU tensors; the layout and what a step's
upload covers are the same as on CUDA."""

from __future__ import annotations

import pytest
import torch

from ember.engine.cuda_graphs import StepInputs

CPU = torch.device("cpu")


def _fill(host: StepInputs, size: int, width: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    host.input_ids[:size] = torch.randint(0, 1000, (size,), generator=g)
    host.positions[:size] = torch.randint(0, 1000, (size,), generator=g)
    host.slot_mapping[:size] = torch.randint(0, 1000, (size,), generator=g)
    host.seq_lens[:size] = torch.randint(1, 1000, (size,), generator=g, dtype=torch.int32)
    host.block_tables[:size, :width] = torch.randint(
        0, 1000, (size, width), generator=g, dtype=torch.int32
    )


@pytest.mark.parametrize(
    ("size", "width"), [(1, 1), (1, 5), (3, 5), (3, 8), (8, 2), (8, 8), (2, 3)]
)
@pytest.mark.parametrize("with_ids", [True, False])
def test_upload_copies_exactly_the_used_parts(size: int, width: int, with_ids: bool) -> None:
    n, max_blocks = 8, 8
    dev, host = StepInputs(n, max_blocks, CPU), StepInputs(n, max_blocks, CPU)
    _fill(host, n, max_blocks, seed=1)  # stale rows beyond the step must not matter
    _fill(host, size, width, seed=2)
    dev.input_ids.fill_(-7)  # ids already on the device (the last step's argmax)
    before_tables = dev.block_tables.clone()
    dev.upload(host, size, width, with_ids=with_ids)
    if with_ids:
        assert torch.equal(dev.input_ids[:size], host.input_ids[:size])
    else:
        assert (dev.input_ids == -7).all()
    assert torch.equal(dev.positions[:size], host.positions[:size])
    assert torch.equal(dev.slot_mapping[:size], host.slot_mapping[:size])
    assert torch.equal(dev.seq_lens[:size], host.seq_lens[:size])
    assert torch.equal(dev.block_tables[:size, :width], host.block_tables[:size, :width])
    # Table entries past the step's rows and width are what they were, or copied whole rows.
    if not (size > 1 and width == max_blocks):
        assert torch.equal(dev.block_tables[1:, width:], before_tables[1:, width:])
    assert torch.equal(dev.block_tables[size:], before_tables[size:])


def test_parts_are_aligned_views_of_one_buffer() -> None:
    inputs = StepInputs(5, 7, CPU)
    base = inputs.buffer.data_ptr()
    for part in (
        inputs.input_ids, inputs.positions, inputs.slot_mapping, inputs.seq_lens,
        inputs.block_tables,
    ):  # fmt: skip
        assert part.untyped_storage().data_ptr() == base
        assert (part.data_ptr() - base) % 256 == 0
    assert inputs.input_ids.dtype == inputs.positions.dtype == torch.int64
    assert inputs.seq_lens.dtype == inputs.block_tables.dtype == torch.int32
    assert inputs.block_tables.shape == (5, 7) and inputs.block_tables.is_contiguous()
    assert (inputs.slot_mapping == -1).all() and (inputs.seq_lens == 1).all()
