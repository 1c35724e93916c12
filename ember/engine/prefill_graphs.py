"""One-sequence prefill under CUDA graphs, for time to first token at low load.

Eager prefill of a short prompt is bound by the host (hundreds of kernel launches from Python),
not the GPU: an 8B model takes ~14 ms for 128 tokens eagerly against ~3 ms of GPU work. A step
that prefills exactly one sequence's remaining prompt (any cached prefix before it) of up to
the largest bucket replays the graph of the smallest bucket that holds it. Rows past the real
tokens are padding: slot -1 (never written), position 0, and the attention kernel's grid covers
them but their query rows are outside the sequence (query_start_loc holds the real length).
"""

from __future__ import annotations

import logging

import torch

from ember.engine.graph_capture import GraphFamily
from ember.layers.metadata import AttentionMetadata, KVCache
from ember.models import CausalLM

log = logging.getLogger(__name__)

BUCKETS = (16, 32, 64, 128, 256, 512)


class CudaGraphPrefiller:
    def __init__(
        self,
        model: CausalLM,
        kv_caches: list[KVCache],
        device: torch.device,
        max_blocks_per_seq: int,
        max_model_len: int,
        max_tokens: int,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.device = device
        self.max_model_len = max_model_len
        self.sizes = [s for s in BUCKETS if s <= min(max_tokens, max_model_len)]
        n = max(self.sizes, default=0)
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.query_start_loc = torch.zeros(2, dtype=torch.int32, device=device)
        self.seq_lens = torch.ones(1, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros((1, max_blocks_per_seq), dtype=torch.int32, device=device)
        self.last_index = torch.zeros(1, dtype=torch.int64, device=device)
        self.family = GraphFamily("prefill", self.sizes, self._forward, device, self._reset)
        self._host = torch.zeros((3, max(n, 1)), dtype=torch.int64, pin_memory=True)
        self._host_small = torch.zeros(4, dtype=torch.int32, pin_memory=True)
        self._host_last = torch.zeros(1, dtype=torch.int64, pin_memory=True)
        self._host_table = torch.zeros(max_blocks_per_seq, dtype=torch.int32, pin_memory=True)

    def _metadata(self, size: int) -> AttentionMetadata:
        return AttentionMetadata(
            query_start_loc=self.query_start_loc,
            seq_lens=self.seq_lens,
            block_tables=self.block_tables,
            slot_mapping=self.slot_mapping[:size],
            max_query_len=size,
            max_seq_len=self.max_model_len,
            query_start_loc_cpu=[0, size],
            seq_lens_cpu=[size],
        )

    def _forward(self, size: int) -> torch.Tensor:
        hidden = self.model(
            self.input_ids[:size], self.positions[:size], self.kv_caches, self._metadata(size)
        )
        return self.model.compute_logits(hidden.index_select(0, self.last_index))

    def _reset(self) -> None:
        # Shapes valid for a capture's eager run: one sequence of `size` tokens at positions
        # 0.., writes skipped.
        self.slot_mapping.fill_(-1)
        self.positions.zero_()
        self.query_start_loc.copy_(torch.tensor([0, 1], dtype=torch.int32), non_blocking=True)
        self.seq_lens.fill_(1)
        self.last_index.zero_()

    def capture(self, everything: bool = False) -> None:
        """Capture every bucket, if asked; otherwise none before ready: a first prompt runs
        eagerly (~8 ms more for 128 tokens of an 8B model) and the buckets follow when idle."""
        if everything:
            self.family.capture(self.sizes)

    def fits(self, num_tokens: int) -> bool:
        return num_tokens > 1 and self.family.bucket(num_tokens) is not None

    def run(
        self, token_ids: list[int], start: int, slots: list[int], table: list[int]
    ) -> torch.Tensor:
        """Prefill `token_ids` at positions start.. of one sequence whose blocks are `table`;
        returns the logits of its last token, [1, vocab]."""
        n = len(token_ids)
        size = self.family.bucket(n)
        assert size is not None, "run() of a prompt that fits() no graph"
        self.family.want(n)
        pad = size - n
        host = self._host
        host[0, :size] = torch.tensor(token_ids + [0] * pad)
        host[1, :size] = torch.tensor(list(range(start, start + n)) + [0] * pad)
        host[2, :size] = torch.tensor(slots + [-1] * pad)
        self._host_small[:3] = torch.tensor([0, n, start + n], dtype=torch.int32)
        self._host_last[0] = n - 1
        self._host_table[: len(table)] = torch.tensor(table, dtype=torch.int32)
        self.input_ids[:size].copy_(host[0, :size], non_blocking=True)
        self.positions[:size].copy_(host[1, :size], non_blocking=True)
        self.slot_mapping[:size].copy_(host[2, :size], non_blocking=True)
        self.query_start_loc.copy_(self._host_small[:2], non_blocking=True)
        self.seq_lens.copy_(self._host_small[2:3], non_blocking=True)
        self.last_index.copy_(self._host_last, non_blocking=True)
        self.block_tables[0, : len(table)].copy_(self._host_table[: len(table)], non_blocking=True)
        self.family.graphs[size].replay()
        return self.family.outputs[size]
