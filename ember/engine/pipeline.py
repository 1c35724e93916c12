"""Async scheduling: decode step N+1 is scheduled and launched before step N's tokens reach the
CPU, so the host's work between steps (scheduling, staging inputs, the scheduler's update,
building outputs) runs while the GPU computes instead of leaving it idle.

While decode steps follow each other with the same requests, one step is always in flight:
`step()` launches the next one, whose input tokens are the in-flight step's samples, still on the
device, and only then waits for the in-flight step's tokens and reports them. A request that
finishes on those tokens (EOS, a stop token) has had one extra token computed for it, which is
dropped; its KV blocks are freed at once, since every later GPU write to them is ordered after
that step on the same stream. Anything else (a request waiting to start, a prefill chunk, a
request that needs its latest token on the host: penalties, grammars, logprobs, min_tokens)
ends the pipeline: the in-flight step is finished and the next step runs synchronously.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ember.engine.request import Request, RequestStatus
from ember.engine.sampler import Sampler, SamplerOutput
from ember.engine.scheduler import SchedulerOutput
from ember.engine.upload import upload

if TYPE_CHECKING:
    from ember.engine.core import EngineCore
    from ember.engine.messages import EngineCoreOutput


@dataclass(slots=True)
class _InFlight:
    sched: SchedulerOutput
    reqs: list[Request]  # in row order
    tokens: torch.Tensor  # sampled, on the device, one per row


class DecodePipeline:
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
            if not _decode_only(sched):
                return core.run_step(sched, time.perf_counter() - t0)
            reqs = [r for r, _ in sched.scheduled]
            positions = [r.num_computed_tokens for r in reqs]
            ids = [r.token_at(p) for r, p in zip(reqs, positions, strict=True)]
            try:
                core.faults.before_step()
                tokens = core.runner.launch_decode(reqs, positions, ids)
            except torch.cuda.OutOfMemoryError as e:
                core._recover_from_oom(e)
                return []
            self.inflight = _InFlight(sched, reqs, tokens)
            return []
        self.inflight = self._continue(prev)
        t1 = time.perf_counter()
        token_ids = prev.tokens.tolist()  # the one wait for the GPU, one step behind
        core.after_good_step()
        t2 = time.perf_counter()
        outputs = core.finish_step(prev.sched, prev.reqs, SamplerOutput(token_ids, None))
        if self.inflight is not None and not any(r.status == RequestStatus.RUNNING
                                                 for r in self.inflight.reqs):  # fmt: skip
            self.inflight = None  # every request it computes for has just finished
        core.step_times.add(t1 - t0, t2 - t1, time.perf_counter() - t2, core.runner.last_step_graph)
        return outputs

    def _continue(self, prev: _InFlight) -> _InFlight | None:
        """Launch the step after `prev` for the requests that go on, or None to end the
        pipeline. Runs before prev's tokens are known: each of its requests is one token
        further than the scheduler says."""
        core = self.core
        sch = core.scheduler
        if sch.waiting:
            return None  # admit them with a synchronous step
        in_prev = {r.request_id: i for i, r in enumerate(prev.reqs)}
        if any(r.request_id not in in_prev for r in sch.running):
            return None
        if any(Sampler.needs_host(r) for r in sch.running):
            return None
        # A request whose token in flight is its last (max_tokens) has no next step.
        reqs = [
            r
            for r in prev.reqs
            if r.status == RequestStatus.RUNNING and len(r.output_token_ids) + 1 < r.max_tokens
        ]
        if not reqs:
            return None
        for r in reqs:  # blocks for the in-flight position and the next one
            if not core.kv.allocate_slots(r, 2):
                return None  # out of blocks: the synchronous step preempts
        rows = [in_prev[r.request_id] for r in reqs]
        ids = prev.tokens
        if rows != list(range(len(prev.reqs))):
            ids = prev.tokens[upload(rows, torch.int64, prev.tokens.device)]
        positions = [r.num_computed_tokens + 1 for r in reqs]
        try:
            core.faults.before_step()
            tokens = core.runner.launch_decode(reqs, positions, ids)
        except torch.cuda.OutOfMemoryError:
            return None  # the synchronous path handles it on its own step
        self.launched_ahead += 1
        return _InFlight(SchedulerOutput(scheduled=[(r, 1) for r in reqs]), reqs, tokens)


def _decode_only(sched: SchedulerOutput) -> bool:
    return all(
        n == 1 and r.num_computed_tokens + 1 == r.num_tokens and not Sampler.needs_host(r)
        for r, n in sched.scheduled
    )
