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
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros((n, max_blocks_per_seq), dtype=torch.int32, device=device)
        self.family = GraphFamily("decode", self.sizes, self._forward, device, self._reset)
        # Host staging, pinned so the per-step uploads are async. Two sets, used in turn: with
        # async scheduling a step's uploads may still be pending when the next step is staged.
        self._staging = [_Staging(n, max_blocks_per_seq) for _ in range(2)]
        self._turn = 0

    def _metadata(self, size: int) -> AttentionMetadata:
        return AttentionMetadata(
            query_start_loc=self.query_start_loc[: size + 1],
            seq_lens=self.seq_lens[:size],
            block_tables=self.block_tables[:size],
            slot_mapping=self.slot_mapping[:size],
            max_query_len=1,
            max_seq_len=self.max_model_len,
            query_start_loc_cpu=list(range(size + 1)),
            seq_lens_cpu=[1] * size,
        )

    def _forward(self, size: int) -> torch.Tensor:
        hidden = self.model(
            self.input_ids[:size], self.positions[:size], self.kv_caches, self._metadata(size)
        )
        return self.model.compute_logits(hidden)

    def _reset(self) -> None:
        self.slot_mapping.fill_(-1)  # a capture's eager run writes no cache

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
        tokens come from the host, or are a device tensor (the previous step's samples)."""
        batch = len(positions)
        size = self.family.bucket(batch)
        assert size is not None, "run() of a batch that fits() no graph"
        self.family.want(batch)
        pad = size - batch
        st = self._staging[self._turn]
        self._turn ^= 1
        host = st.ids
        if not isinstance(input_ids, torch.Tensor):
            host[0, :size] = torch.tensor(input_ids + [0] * pad)
        host[1, :size] = torch.tensor(positions + [0] * pad)
        host[2, :size] = torch.tensor(slots + [-1] * pad)
        st.lens[:size] = torch.tensor(seq_lens + [1] * pad, dtype=torch.int32)
        width = max(len(t) for t in tables)
        rows = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
        st.tables[:batch, :width] = rows
        st.tables[batch:size, :width] = 0
        if isinstance(input_ids, torch.Tensor):
            self.input_ids[:batch].copy_(input_ids)  # on the device, ordered after its producer
        else:
            self.input_ids[:size].copy_(host[0, :size], non_blocking=True)
        self.positions[:size].copy_(host[1, :size], non_blocking=True)
        self.slot_mapping[:size].copy_(host[2, :size], non_blocking=True)
        self.seq_lens[:size].copy_(st.lens[:size], non_blocking=True)
        self.block_tables[:size, :width].copy_(st.tables[:size, :width], non_blocking=True)
        self.family.graphs[size].replay()
        return self.family.outputs[size][:batch]


class _Staging:
    """Pinned host buffers for one step's graph inputs."""

    def __init__(self, n: int, max_blocks_per_seq: int) -> None:
        self.ids = torch.zeros((3, n), dtype=torch.int64, pin_memory=True)
        self.lens = torch.zeros(n, dtype=torch.int32, pin_memory=True)
        self.tables = torch.zeros((n, max_blocks_per_seq), dtype=torch.int32, pin_memory=True)
