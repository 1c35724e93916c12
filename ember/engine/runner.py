"""Build a step's flattened batch from the scheduler's decision, run the model, sample."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from ember.engine.cuda_graphs import CudaGraphDecoder
from ember.engine.graph_capture import GraphFamily
from ember.engine.prefill_graphs import CudaGraphPrefiller
from ember.engine.request import Request
from ember.engine.sampler import Sampler, SamplerOutput, gather_logprobs
from ember.engine.scheduler import SchedulerOutput
from ember.engine.upload import upload
from ember.layers.metadata import AttentionMetadata, KVCache
from ember.models import CausalLM
from ember.ops import use_triton

log = logging.getLogger(__name__)


@dataclass(slots=True)
class StepRow:
    """One sequence's part of a step: `n` tokens from position `start`, given in `ids`, or, for
    a one-token row launched ahead (async scheduling) whose token is still on the device, row
    `device_row` of the previous step's samples."""

    req: Request
    start: int
    n: int
    ids: list[int]
    device_row: int | None
    samples: bool  # its last token's logits are sampled

    @classmethod
    def scheduled(cls, req: Request, n: int) -> StepRow:
        """A scheduler entry as the scheduler sees it: `n` tokens after the computed ones, all
        on the host, sampling if they reach the end of the request's tokens."""
        start = req.num_computed_tokens
        return cls(req, start, n, req.tokens(start, start + n), None, start + n == req.num_tokens)


class ModelRunner:
    def __init__(
        self,
        model: CausalLM,
        kv_caches: list[KVCache],
        block_size: int,
        device: torch.device,
        max_num_seqs: int = 1,
        max_model_len: int = 1,
        max_num_batched_tokens: int = 1,
        enforce_eager: bool = True,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device
        self.sampler = Sampler(device)
        self.graphs: CudaGraphDecoder | None = None
        self.prefill_graphs: CudaGraphPrefiller | None = None
        self.last_step_graph = False
        if device.type == "cuda" and not enforce_eager and use_triton(device):
            max_blocks = -(-max_model_len // block_size)
            self.graphs = CudaGraphDecoder(
                model, kv_caches, device, max_num_seqs, max_blocks, max_model_len
            )
            self.prefill_graphs = CudaGraphPrefiller(
                model, kv_caches, device, max_blocks, max_model_len, max_num_batched_tokens
            )

    def capture(self, everything: bool = False) -> float:
        """Capture the CUDA graphs wanted before ready (if enabled), or all of them; returns
        the seconds it took."""
        if self.graphs is None:
            return 0.0
        t0 = time.monotonic()
        self.graphs.capture(everything)
        if self.prefill_graphs is not None:
            self.prefill_graphs.capture(everything)
        return time.monotonic() - t0

    def _families(self) -> list[GraphFamily]:
        families = [self.graphs.family] if self.graphs is not None else []
        if self.prefill_graphs is not None:
            families.append(self.prefill_graphs.family)
        return families

    def wants_capture(self) -> bool:
        """A batch padded past a size that is not captured yet: capture it before the next
        step (~35 ms once) rather than pad every step."""
        return any(f.wanted for f in self._families())

    def has_pending_graphs(self) -> bool:
        return any(f.pending for f in self._families())

    def capture_next(self) -> bool:
        """Capture one pending graph, a wanted one first; False if none is left."""
        families = self._families()
        for family in sorted(families, key=lambda f: not f.wanted):
            size = family.next_pending()
            if size is not None:
                t0 = time.monotonic()
                try:
                    family.capture([size])
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    log.warning(
                        "out of GPU memory capturing the %s CUDA graph of size %d; batches of "
                        "that size pad to a larger graph or run eagerly",
                        family.name,
                        size,
                    )
                    family.give_up()
                    return True
                log.info(
                    "captured the %s CUDA graph of size %d in %.0f ms (%d pending)",
                    family.name,
                    size,
                    1000 * (time.monotonic() - t0),
                    sum(len(f.pending) for f in families),
                )
                return True
        return False

    def is_prefill_graph_step(self, sched: SchedulerOutput) -> bool:
        if self.prefill_graphs is None or len(sched.scheduled) != 1:
            return False
        req, n = sched.scheduled[0]
        if req.num_computed_tokens + n != req.num_tokens or req.params.prompt_logprobs is not None:
            return False
        if self.prefill_graphs.fits(n):
            return True
        self.prefill_graphs.family.want(n)  # captured after this step, for the next prompt
        return False

    def _execute_prefill_graph(self, sched: SchedulerOutput) -> tuple[list[Request], SamplerOutput]:
        assert self.prefill_graphs is not None
        req, n = sched.scheduled[0]
        bs = self.block_size
        start = req.num_computed_tokens
        slots = [req.block_ids[p // bs] * bs + p % bs for p in range(start, start + n)]
        logits = self.prefill_graphs.run(req.tokens(start, start + n), start, slots, req.block_ids)
        return [req], self.sampler(logits, [req])

    def _is_graph_step(self, sched: SchedulerOutput) -> bool:
        if self.graphs is None or not self.graphs.fits(len(sched.scheduled)):
            return False
        return all(
            n == 1 and req.num_computed_tokens + 1 == req.num_tokens for req, n in sched.scheduled
        )

    def _execute_graph(self, sched: SchedulerOutput) -> tuple[list[Request], SamplerOutput]:
        reqs = [req for req, _ in sched.scheduled]
        positions = [req.num_computed_tokens for req in reqs]
        ids = [req.token_at(p) for req, p in zip(reqs, positions, strict=True)]
        logits = self._replay_decode(reqs, positions, ids)
        if _plain_greedy(reqs):
            assert self.graphs is not None
            return reqs, SamplerOutput(self.graphs.greedy_tokens(len(reqs)).tolist(), None)
        return reqs, self.sampler(logits, reqs)

    def _replay_decode(
        self, reqs: list[Request], positions: list[int], input_ids: list[int] | torch.Tensor
    ) -> torch.Tensor:
        """Logits of one decode step (one token per request, at `positions`) from the decode
        graphs; the input tokens come from the host or are a device tensor."""
        assert self.graphs is not None
        bs = self.block_size
        return self.graphs.run(
            input_ids=input_ids,
            positions=positions,
            slots=[
                r.block_ids[p // bs] * bs + p % bs for r, p in zip(reqs, positions, strict=True)
            ],
            seq_lens=[p + 1 for p in positions],
            tables=[req.block_ids for req in reqs],
        )

    def _to_device(self, values: list[int], dtype: torch.dtype) -> torch.Tensor:
        return upload(values, dtype, self.device)

    def prepare(
        self, sched: SchedulerOutput
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int], list[Request]]:
        rows = [StepRow.scheduled(req, n) for req, n in sched.scheduled]
        ids_t, pos_t, meta, logit_rows = self._inputs(rows, None)
        return ids_t, pos_t, meta, logit_rows, [row.req for row in rows if row.samples]

    def _inputs(
        self, rows: list[StepRow], prev_tokens: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        """The flattened batch of `rows` on the device: input ids (rows on the device filled
        from `prev_tokens`), positions, attention metadata, and the flat index of each sampling
        row's last token."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start = [0]
        seq_lens: list[int] = []
        logit_rows: list[int] = []
        from_device: list[int] = []  # flat positions filled from prev_tokens
        device_rows: list[int] = []
        for row in rows:
            blocks = row.req.block_ids
            if row.device_row is not None:
                from_device.append(len(input_ids))
                device_rows.append(row.device_row)
            input_ids += row.ids
            span = range(row.start, row.start + row.n)
            positions += span
            slots += [blocks[p // bs] * bs + p % bs for p in span]
            query_start.append(query_start[-1] + row.n)
            seq_lens.append(row.start + row.n)
            if row.samples:
                logit_rows.append(query_start[-1] - 1)
        ids_t = self._to_device(input_ids, torch.int64)
        if from_device:
            assert prev_tokens is not None
            index = self._to_device(from_device, torch.int64)
            ids_t.index_copy_(0, index, prev_tokens[self._to_device(device_rows, torch.int64)])
        meta = self._metadata(
            [row.req.block_ids for row in rows],
            slots,
            query_start,
            seq_lens,
            max(row.n for row in rows),
        )
        return ids_t, self._to_device(positions, torch.int64), meta, logit_rows

    def _metadata(
        self,
        tables: list[list[int]],
        slots: list[int],
        query_start: list[int],
        seq_lens: list[int],
        max_query_len: int,
    ) -> AttentionMetadata:
        width = max(len(t) for t in tables)
        flat = [b for t in tables for b in (*t, *[0] * (width - len(t)))]
        return AttentionMetadata(
            query_start_loc=self._to_device(query_start, torch.int32),
            seq_lens=self._to_device(seq_lens, torch.int32),
            block_tables=self._to_device(flat, torch.int32).view(len(tables), width),
            slot_mapping=self._to_device(slots, torch.int64),
            max_query_len=max_query_len,
            max_seq_len=max(seq_lens),
            query_start_loc_cpu=query_start,
            seq_lens_cpu=seq_lens,
        )

    @torch.inference_mode()
    def launch_decode(
        self, reqs: list[Request], positions: list[int], input_ids: list[int] | torch.Tensor
    ) -> torch.Tensor:
        """One decode step of `reqs` under the decode graphs (they must fit), whose input
        tokens are given or are still on the device (the previous step's samples, one per row).
        Returns the sampled tokens on the device without waiting for them (async scheduling);
        no row may need the host between steps (Sampler.needs_host)."""
        self.last_step_graph = True
        logits = self._replay_decode(reqs, positions, input_ids)
        if all(r.params.greedy for r in reqs):
            assert self.graphs is not None
            return self.graphs.greedy_tokens(len(reqs))  # the graph's own argmax
        return self.sampler.sample_tokens(logits, reqs)

    @torch.inference_mode()
    def launch_rows(self, rows: list[StepRow], prev_tokens: torch.Tensor | None) -> torch.Tensor:
        """A general step launched ahead, eagerly: prefill chunks and decode rows, some of whose
        input tokens are `prev_tokens` rows on the device. Returns the sampled tokens of the
        rows that sample, in row order, on the device (no sync)."""
        self.last_step_graph = False
        ids_t, pos_t, meta, logit_rows = self._inputs(rows, prev_tokens)
        hidden = self.model(ids_t, pos_t, self.kv_caches, meta)
        logits = self.model.compute_logits(hidden[self._to_device(logit_rows, torch.int64)])
        return self.sampler.sample_tokens(logits, [row.req for row in rows if row.samples])

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> tuple[list[Request], SamplerOutput | None]:
        """Run one step. Returns the requests that get a token this step, in row order, and the
        sampler's result for them (None if every scheduled request was a mid-prompt chunk)."""
        self.last_step_graph = self._is_graph_step(sched)
        if self.last_step_graph:
            return self._execute_graph(sched)
        if self.is_prefill_graph_step(sched):
            self.last_step_graph = True
            return self._execute_prefill_graph(sched)
        input_ids, positions, meta, rows, reqs = self.prepare(sched)
        hidden = self.model(input_ids, positions, self.kv_caches, meta)
        if any(req.params.prompt_logprobs is not None for req, _ in sched.scheduled):
            self._prompt_logprobs(hidden, sched)
        if not rows:
            return [], None
        logits = self.model.compute_logits(hidden[self._to_device(rows, torch.int64)])
        return reqs, self.sampler(logits, reqs)

    def _prompt_logprobs(self, hidden: torch.Tensor, sched: SchedulerOutput) -> None:
        """For each request that asked for prompt logprobs, those of the prompt tokens this
        step's chunk predicts (position p predicts token p + 1), appended to the request; the
        logits are computed PROMPT_LOGITS_ROWS rows at a time. A request recomputed after a
        preemption skips the positions it already has."""
        offset = 0
        for req, n in sched.scheduled:
            k = req.params.prompt_logprobs
            start = req.num_computed_tokens
            first = max(start, len(req.prompt_logprobs))
            last = min(start + n, req.num_prompt_tokens - 1)
            for lo in range(first, last, PROMPT_LOGITS_ROWS) if k is not None else ():
                hi = min(lo + PROMPT_LOGITS_ROWS, last)
                rows = torch.arange(offset + lo - start, offset + hi - start, device=self.device)
                logprobs = torch.log_softmax(self.model.compute_logits(hidden[rows]).float(), -1)
                targets = self._to_device(req.prompt_token_ids[lo + 1 : hi + 1], torch.int64)
                ranked = gather_logprobs(logprobs, targets, [k] * len(targets))
                req.prompt_logprobs += [p for p in ranked if p is not None]
            offset += n


# Prompt positions whose logits are computed at once for prompt logprobs: 512 rows of a 128k
# vocabulary are 256 MB in float32.
PROMPT_LOGITS_ROWS = 512


def _plain_greedy(reqs: list[Request]) -> bool:
    """Every row takes its argmax of the raw logits (no penalties, grammar, min_tokens or
    logprobs), which a decode graph computes itself."""
    return all(r.params.greedy and not Sampler.needs_host(r) for r in reqs)
