"""Async scheduling: step N+1 is scheduled and launched before step N's tokens reach the CPU,
so the host's work between steps (scheduling, staging inputs, the scheduler's update, building
outputs) runs while the GPU computes instead of leaving it idle.

While it runs, one step is always in flight: `step()` schedules and launches the next one, then
waits for the in-flight step's tokens and reports them. The next step is scheduled from the
scheduler's state plus what is in flight: a request that samples in the in-flight step has one
more token than the scheduler knows (its next input, still on the device, is copied there), and
one whose prompt chunk is in flight has that many more tokens computed. Waiting requests are
admitted as usual. A request that finishes on the in-flight tokens (EOS, a stop token) has had
one extra token computed, which is dropped; its KV blocks are freed at once, since every later
GPU write to them is ordered after that step on the same stream.

A request that needs its latest token on the host before the next step (penalties, grammars,
logprobs, min_tokens), running out of KV blocks (preemption), a lone prompt that a prefill
CUDA graph serves best, and a batch that wants a CUDA graph not yet captured (it is captured
between the two steps) all end the pipeline: the in-flight step is finished and the next step
runs synchronously.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

import torch

from ember.engine.request import Request, RequestStatus
from ember.engine.runner import StepRow
from ember.engine.sampler import Sampler, SamplerOutput
from ember.engine.scheduler import SchedulerOutput
from ember.engine.upload import upload

if TYPE_CHECKING:
    from ember.engine.core import EngineCore
    from ember.engine.messages import EngineCoreOutput


@dataclass(slots=True)
class _InFlight:
    sched: SchedulerOutput  # (request, new tokens) per row, for the scheduler's update
    sampling: list[Request]  # the rows that sample, in the order of `tokens`
    tokens: torch.Tensor  # sampled, on the device
    host: torch.Tensor  # their copy on the host, valid once `copied` has completed
    copied: torch.cuda.Event | None  # None on the CPU (the copy is the tensor itself)

    @classmethod
    def launched(
        cls, sched: SchedulerOutput, sampling: list[Request], tokens: torch.Tensor
    ) -> _InFlight:
        """Start the tokens' copy to the host now, ordered right after the step that samples
        them: reading them later must wait for this step only, not for the step launched after
        it on the same stream (a plain .tolist() then would queue behind that one)."""
        if tokens.device.type != "cuda":  # a copy: `tokens` may be a buffer the next step reuses
            return cls(sched, sampling, tokens, tokens.clone(), None)
        host = tokens.to("cpu", non_blocking=True)  # into pinned memory
        copied = torch.cuda.Event()
        copied.record(torch.cuda.current_stream(tokens.device))
        return cls(sched, sampling, tokens, host, copied)

    def token_ids(self) -> list[int]:
        """The sampled tokens; waits for this step's GPU work, and nothing launched after it."""
        if self.copied is not None:
            self.copied.synchronize()
        return self.host.tolist()


class StepPipeline:
    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self.inflight: _InFlight | None = None
        self.launched_ahead = 0  # steps launched before the previous one's tokens were read

    def step(self) -> list[EngineCoreOutput]:
        core = self.core
        t0 = time.perf_counter()
        prev = self.inflight
        if prev is None:
            sched = core.scheduler.schedule()
            if not sched:
                return []
            if not self._may_launch(sched):
                return core.run_step(sched, time.perf_counter() - t0)
            rows = [StepRow.scheduled(r, n) for r, n in sched.scheduled]
            try:
                core.faults.before_step()
                self.inflight = self._launch(sched, rows, None)
            except torch.cuda.OutOfMemoryError as e:
                core.recover_from_oom(e)
            return []
        self.inflight = self._continue(prev)
        t1 = time.perf_counter()
        token_ids = prev.token_ids()  # the one wait for the GPU, one step behind
        core.after_good_step()
        t2 = time.perf_counter()
        sampled = SamplerOutput(token_ids, None) if prev.sampling else None
        outputs = core.finish_step(prev.sched, prev.sampling, sampled)
        if self.inflight is not None and not any(
            r.status == RequestStatus.RUNNING for r, _ in self.inflight.sched.scheduled
        ):
            self.inflight = None  # every request it computes for has just finished
        core.step_times.add(t1 - t0, t2 - t1, time.perf_counter() - t2, core.runner.last_step_graph)
        return outputs

    def _may_launch(self, sched: SchedulerOutput) -> bool:
        runner = self.core.runner
        if runner.is_prefill_graph_step(sched):
            return False  # faster as a graph, synchronously
        return not any(Sampler.needs_host(r) for r, _ in sched.scheduled)

    def _launch(
        self, sched: SchedulerOutput, rows: list[StepRow], prev_tokens: torch.Tensor | None
    ) -> _InFlight:
        runner = self.core.runner
        sampling = [row.req for row in rows if row.samples]
        decode = all(row.n == 1 and row.samples for row in rows)
        if decode and runner.graphs is not None and runner.graphs.fits(len(rows)):
            picks = [row.device_row for row in rows]
            ids: list[int] | torch.Tensor | None = None
            if all(p is None for p in picks):
                ids = [row.ids[0] for row in rows]
            elif prev_tokens is not None and None not in picks:
                on_device = [p for p in picks if p is not None]
                ids = prev_tokens
                if on_device != list(range(len(prev_tokens))):
                    ids = prev_tokens[upload(on_device, torch.int64, prev_tokens.device)]
            if ids is not None:  # else mixed sources: the general path below
                positions = [row.start for row in rows]
                tokens = runner.launch_decode(sampling, positions, ids)
                return _InFlight.launched(sched, sampling, tokens)
        return _InFlight.launched(sched, sampling, runner.launch_rows(rows, prev_tokens))

    def _continue(self, prev: _InFlight) -> _InFlight | None:
        """Schedule and launch the step after `prev` from the scheduler's state plus what
        prev computes, or return None to end the pipeline."""
        core = self.core
        sch = core.scheduler
        if core.runner.wants_capture():
            return None  # a batch padded to a bigger graph: drain, and capture its own
        if any(Sampler.needs_host(r) for r in sch.running):
            return None
        if any(Sampler.needs_host(r) for r in islice(sch.waiting, sch.max_num_seqs)):
            return None
        lag = {r.request_id: n for r, n in prev.sched.scheduled}
        sampled_row = {r.request_id: i for i, r in enumerate(prev.sampling)}
        budget = sch.max_num_batched_tokens
        sched = SchedulerOutput()
        rows: list[StepRow] = []
        for r in sch.running:
            if budget <= 0:
                break
            if r.status != RequestStatus.RUNNING:
                continue
            row = sampled_row.get(r.request_id)
            if row is not None and len(r.output_token_ids) + 1 >= r.max_tokens:
                continue  # its token in flight is its last
            in_flight = lag.get(r.request_id, 0)
            start = r.num_computed_tokens + in_flight
            known = r.num_tokens + (row is not None)
            n = min(known - start, budget)
            if n <= 0:
                continue
            # Blocks for what is in flight and for this step.
            if not core.kv.allocate_slots(r, in_flight + n):
                return None  # out of blocks: a synchronous step preempts
            ids = [0] if row is not None else r.tokens(start, start + n)
            rows.append(StepRow(r, start, n, ids, row, start + n == known))
            sched.scheduled.append((r, n))
            budget -= n
        first_new = len(sched.scheduled)
        if budget > 0:
            sch.admit_waiting(sched, budget)
        rows += [StepRow.scheduled(r, n) for r, n in sched.scheduled[first_new:]]
        if not rows:
            return None
        try:
            core.faults.before_step()
            launched = self._launch(sched, rows, prev.tokens)
        except torch.cuda.OutOfMemoryError:
            return None  # the synchronous path handles it on its own step
        self.launched_ahead += 1
        return launched
