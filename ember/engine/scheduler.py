"""Token-budget scheduling: one model for prefill, decode, chunked prefill and preemption.

Each step hands out {request: number of new tokens} under a token budget and a limit on running
sequences. Running requests go first, in arrival order; when blocks run out, the newest running
request is preempted (its blocks freed, to be recomputed later, cheaply thanks to the prefix cache).
Waiting requests are admitted only in steps that preempted nothing.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from ember.engine.kv_cache import KVCacheManager
from ember.engine.request import Request, RequestStatus


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[tuple[Request, int]] = field(default_factory=list)  # (request, new tokens)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.scheduled)

    def __bool__(self) -> bool:
        return bool(self.scheduled)


class Scheduler:
    def __init__(self, kv: KVCacheManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0

    def add(self, req: Request) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"request id {req.request_id!r} is already in use")
        self.requests[req.request_id] = req
        self.waiting.append(req)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            while not self.kv.allocate_slots(req, n):
                victim = self.running.pop()
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is req:
                    break
            if req.status != RequestStatus.RUNNING:
                break
            out.scheduled.append((req, n))
            budget -= n
            i += 1

        if not out.preempted:
            self.admit_waiting(out, budget)
        return out

    def admit_waiting(self, out: SchedulerOutput, budget: int) -> int:
        """Start waiting requests, oldest first, while the token budget, the sequence limit and
        the free blocks allow; appends them to `out`. Returns the budget left."""
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            computed = self.kv.get_computed_blocks(req)
            num_computed = len(computed) * self.kv.block_size
            n = min(req.num_tokens - num_computed, budget)
            if not self.kv.allocate_slots(req, n, computed):
                break
            self.waiting.popleft()
            req.num_computed_tokens = num_computed
            if req.num_cached_tokens < 0:
                req.num_cached_tokens = num_computed
            if req.first_scheduled_time is None:
                req.first_scheduled_time = time.monotonic()
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            out.scheduled.append((req, n))
            budget -= n
        return budget

    def preempt_newest(self, n: int) -> list[Request]:
        """Preempt the `n` newest running requests (their blocks freed, to be recomputed)."""
        victims = []
        for _ in range(min(n, len(self.running))):
            victim = self.running.pop()
            self._preempt(victim)
            victims.append(victim)
        return victims

    def _preempt(self, req: Request) -> None:
        self.kv.free(req)
        req.num_computed_tokens = 0
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def update(self, out: SchedulerOutput, sampled: dict[str, int]) -> list[Request]:
        """Advance the scheduled requests by their computed tokens, append sampled tokens, and
        finish requests that hit EOS, a stop token or their length. Returns the requests that
        received a token (finished ones included)."""
        advanced: list[Request] = []
        for req, n in out.scheduled:
            if req.status != RequestStatus.RUNNING:
                continue  # aborted while the step ran
            req.num_computed_tokens += n
            self.kv.cache_full_blocks(req)
            token = sampled.get(req.request_id)
            if token is None:
                continue  # a prefill chunk that has not reached the end of the prompt
            req.output_token_ids.append(token)
            self._check_stop(req, token)
            advanced.append(req)
            if req.finished:
                self._remove(req)
        return advanced

    def _check_stop(self, req: Request, token: int) -> None:
        n_out = len(req.output_token_ids)
        p = req.params
        if n_out >= p.min_tokens:
            if not p.ignore_eos and token in req.eos_token_ids:
                self._finish(req, "stop", None)
                return
            if token in p.stop_token_ids:
                self._finish(req, "stop", token)
                return
        if n_out >= req.max_tokens:
            self._finish(req, "length", None)

    def _finish(self, req: Request, reason: str, stop_reason: int | str | None) -> None:
        req.status = RequestStatus.FINISHED
        req.finish_reason = reason
        req.stop_reason = stop_reason

    def _remove(self, req: Request) -> None:
        self.kv.free(req)
        self.requests.pop(req.request_id, None)
        if req in self.running:
            self.running.remove(req)

    def abort(self, request_id: str) -> Request | None:
        req = self.requests.get(request_id)
        if req is None:
            return None
        if req in self.waiting:
            self.waiting.remove(req)
        self._finish(req, "abort", None)
        self._remove(req)
        return req

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)
