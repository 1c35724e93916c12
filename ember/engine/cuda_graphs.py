"""Decode under CUDA graphs: one graph per batch size of a ladder, static inputs, one pool.

A decode-only step (every scheduled request has exactly one new token and samples) of B
sequences replays the graph of the smallest captured size G >= B. Rows B..G-1 are padding: slot
-1 (the KV writer skips it), sequence length 1, block 0, so they read finite data and write
nothing. Everything the kernels read per step lives in static device buffers that are refilled
before each replay; launch shapes (grid sizes, split-KV counts) are frozen at capture, so the
attention metadata is captured with the model's max length.
"""

from __future__ import annotations

import logging
import time

import torch

from ember.engine.graph_capture import GraphFamily, startup_sizes
from ember.layers.metadata import AttentionMetadata, KVCache
from ember.models import CausalLM
from ember.ops.triton_argmax import argmax_into

log = logging.getLogger(__name__)


def capture_sizes(max_num_seqs: int) -> list[int]:
    """A ladder whose steps stay within ~15% padding (each capture costs start-up time):
    1, 2, 4, 8, 16, 24, 32, 48, ..., 128, then every 32 to 256 and every 64 to 1024, and
    max_num_seqs itself."""
    ladder = [1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128]
    ladder += [*range(160, 257, 32), *range(320, 1025, 64)]
    sizes = [s for s in ladder if s < max_num_seqs]
    return [*sizes, max_num_seqs] if max_num_seqs <= 1024 else sizes


class CudaGraphDecoder:
    def __init__(
        self,
        model: CausalLM,
        kv_caches: list[KVCache],
        device: torch.device,
        max_num_seqs: int,
        max_blocks_per_seq: int,
        max_model_len: int,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.device = device
        self.max_model_len = max_model_len
        self.sizes = capture_sizes(max_num_seqs)
        n = max(self.sizes)
        # Every input a step changes lives in one device buffer, laid out as one host buffer
        # is, so that a step's inputs go up in one or two copies (StepInputs).
        self.inputs = StepInputs(n, max_blocks_per_seq, device)
        self.input_ids = self.inputs.input_ids
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.family = GraphFamily("decode", self.sizes, self._forward, device, self._reset)
        # Host staging, pinned so the per-step uploads are async. Two sets, used in turn: with
        # async scheduling a step's uploads may still be pending when the next step is staged.
        self._staging = [StepInputs(n, max_blocks_per_seq, torch.device("cpu")) for _ in "ab"]
        self._turn = 0

    def _metadata(self, size: int) -> AttentionMetadata:
        inputs = self.inputs
        return AttentionMetadata(
            query_start_loc=self.query_start_loc[: size + 1],
            seq_lens=inputs.seq_lens[:size],
            block_tables=inputs.block_tables[:size],
            slot_mapping=inputs.slot_mapping[:size],
            max_query_len=1,
            max_seq_len=self.max_model_len,
            query_start_loc_cpu=list(range(size + 1)),
            seq_lens_cpu=[1] * size,
        )

    def _forward(self, size: int) -> torch.Tensor:
        ids = self.input_ids[:size]
        hidden = self.model(ids, self.inputs.positions[:size], self.kv_caches, self._metadata(size))
        logits = self.model.compute_logits(hidden)
        # The greedy tokens, inside the graph, written where the next step reads its input
        # tokens: a greedy batch decoding on needs no argmax launch and no copy of its ids.
        argmax_into(logits, ids)
        return logits

    def _reset(self) -> None:
        self.inputs.slot_mapping.fill_(-1)  # a capture's eager run writes no cache

    def capture(self, everything: bool = False) -> float:
        """Capture the sizes wanted before ready (or all of them); returns seconds."""
        t0 = time.monotonic()
        sizes = self.sizes if everything else startup_sizes(self.sizes)
        self.family.capture(sizes)
        elapsed = time.monotonic() - t0
        log.info(
            "captured %d of %d decode CUDA graphs (batch %s) in %.2f s%s",
            len(sizes),
            len(self.sizes),
            ",".join(map(str, sizes)),
            elapsed,
            "" if everything else "; the rest follow when idle or first needed",
        )
        return elapsed

    def fits(self, batch: int) -> bool:
        return self.family.bucket(batch) is not None

    def run(
        self,
        input_ids: list[int] | torch.Tensor,
        positions: list[int],
        slots: list[int],
        seq_lens: list[int],
        tables: list[list[int]],
    ) -> torch.Tensor:
        """Replay the decode graph for these B sequences; returns logits [B, vocab]. The input
        tokens come from the host, or are a device tensor (the previous step's samples).
        Afterwards `greedy_tokens(B)` holds each row's argmax until the next replay."""
        batch = len(positions)
        size = self.family.bucket(batch)
        assert size is not None, "run() of a batch that fits() no graph"
        self.family.want(batch)
        pad = size - batch
        st = self._staging[self._turn]
        self._turn ^= 1
        from_host = not isinstance(input_ids, torch.Tensor)
        if isinstance(input_ids, torch.Tensor):
            if input_ids.data_ptr() != self.input_ids.data_ptr():  # else in place already
                self.input_ids[:batch].copy_(input_ids)  # on the device, after its producer
        else:
            st.input_ids[:size] = torch.tensor(input_ids + [0] * pad)
        st.positions[:size] = torch.tensor(positions + [0] * pad)
        st.slot_mapping[:size] = torch.tensor(slots + [-1] * pad)
        st.seq_lens[:size] = torch.tensor(seq_lens + [1] * pad, dtype=torch.int32)
        width = max(len(t) for t in tables)
        rows = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
        st.block_tables[:batch, :width] = rows
        st.block_tables[batch:size, :width] = 0
        self.inputs.upload(st, size, width, with_ids=from_host)
        self.family.graphs[size].replay()
        return self.family.outputs[size][:batch]

    def greedy_tokens(self, batch: int) -> torch.Tensor:
        """The last replay's argmax of its first `batch` rows, on the device: also the next
        step's input tokens, in place (valid until the next replay)."""
        return self.input_ids[:batch]


class StepInputs:
    """A decode step's inputs in one buffer: input ids, positions and slots (int64), sequence
    lengths (int32), then the block tables [n, max_blocks] (int32), each part 256-byte aligned.
    The device copy and the host staging share the layout, so what a step of `size` rows
    changes (the first `size` entries of each part, the first `width` entries of its table
    rows) goes up in one copy of the parts and the first table row, plus one for the other
    table rows when there are several and they are narrower than the buffer."""

    def __init__(self, n: int, max_blocks: int, device: torch.device) -> None:
        self.max_blocks = max_blocks
        offsets, at = [], 0
        for nbytes in (8 * n, 8 * n, 8 * n, 4 * n, 4 * n * max_blocks):
            offsets.append(at)
            at += -(-nbytes // 256) * 256
        self.offsets = offsets
        pinned = device.type == "cpu" and torch.cuda.is_available()
        self.buffer = torch.zeros(at, dtype=torch.uint8, device=device, pin_memory=pinned)
        ids, pos, slots, lens, tables = (self._part(i) for i in range(5))
        self.input_ids = ids.view(torch.int64)[:n]
        self.positions = pos.view(torch.int64)[:n]
        self.slot_mapping = slots.view(torch.int64)[:n]
        self.slot_mapping.fill_(-1)
        self.seq_lens = lens.view(torch.int32)[:n]
        self.seq_lens.fill_(1)
        self.block_tables = tables.view(torch.int32)[: n * max_blocks].view(n, max_blocks)

    def _part(self, i: int) -> torch.Tensor:
        end = self.offsets[i + 1] if i + 1 < len(self.offsets) else self.buffer.numel()
        return self.buffer[self.offsets[i] : end]

    def upload(self, host: StepInputs, size: int, width: int, *, with_ids: bool) -> None:
        """Copy a step of `size` rows and table `width` from `host` (same layout, pinned),
        asynchronously; the input ids too if `with_ids` (else they are on the device)."""
        begin = self.offsets[0 if with_ids else 1]
        end = self.offsets[4] + 4 * width  # through the first table row's used entries
        if size > 1 and width == self.max_blocks:
            end = self.offsets[4] + 4 * width * size  # whole rows: contiguous
        self.buffer[begin:end].copy_(host.buffer[begin:end], non_blocking=True)
        if size > 1 and width < self.max_blocks:
            rest = host.block_tables[1:size, :width]
            self.block_tables[1:size, :width].copy_(rest, non_blocking=True)
