"""The discrete-event fleet: instances with a cold start, a router, and two autoscalers.

Time is in seconds. Events are (time, seq, kind, payload) on one heap; `seq` breaks ties in
insertion order, so a run is a pure function of its inputs and seed.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from ember.sim.profile import Profile
from ember.sim.trace import Arrival

Policy = Literal["cloudrun", "hpa"]


@dataclass(slots=True)
class SimConfig:
    policy: Policy = "cloudrun"
    min_instances: int = 0
    max_instances: int = 10
    concurrency: int = 8  # Cloud Run containerConcurrency: requests routed to one instance
    target_utilization: float = 0.6  # Cloud Run scales to keep in-flight near this share
    eval_period_s: float = 2.0  # Cloud Run autoscaler decision period
    scale_in_window_s: float = 120.0  # Cloud Run keeps unneeded capacity this long
    pending_timeout_s: float = 60.0  # a request with no instance to go to fails after this
    sync_period_s: float = 15.0  # HPA --horizontal-pod-autoscaler-sync-period
    stabilization_s: float = 300.0  # HPA scale-down stabilisation window
    hpa_target: float = 2.0  # vllm:num_requests_waiting per pod
    hpa_tolerance: float = 0.1
    max_queue: int = 512  # per pod; beyond it ember answers 503
    exponential_service: bool = False  # service times ~ Exp(mean) instead of fixed
    price_per_hour: float = 1.0  # per instance-hour
    seed: int = 0


@dataclass(slots=True)
class _Req:
    arrival: float
    output_tokens: int


@dataclass(slots=True)
class _Instance:
    created: float
    ready_at: float
    ready: bool = False
    draining: bool = False
    removed: float | None = None
    in_service: int = 0
    queue: deque[_Req] = field(default_factory=deque)

    @property
    def load(self) -> int:
        return self.in_service + len(self.queue)


@dataclass(slots=True)
class SimResult:
    completed: int
    rejected: int
    ttft_p50_s: float
    ttft_p99_s: float
    ttft_mean_s: float
    cold_starts: int
    peak_instances: int
    instance_hours: float
    cost: float
    timeline: list[tuple[float, float, int, int, int]]  # t, req/s, ready, starting, queued

    def summary(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__ if k != "timeline"}  # type: ignore[attr-defined]


def _pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, math.ceil(p / 100.0 * len(sorted_values)) - 1))
    return sorted_values[k]


class Fleet:
    def __init__(self, profile: Profile, config: SimConfig) -> None:
        self.p = profile
        self.c = config
        self.rng = random.Random(config.seed)
        self.events: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.instances: list[_Instance] = []
        self.pending: deque[_Req] = deque()
        self.ttfts: list[float] = []
        self.rejected = 0
        self.cold_starts = 0
        self.history: deque[tuple[float, int]] = deque()  # (time, recommended instances)
        self.timeline: list[tuple[float, float, int, int, int]] = []
        self._arrived_since_sample = 0
        self._last_sample = 0.0

    # -- events --
    def _at(self, t: float, kind: str, payload: Any = None) -> None:
        heapq.heappush(self.events, (t, self.seq, kind, payload))
        self.seq += 1

    def alive(self) -> list[_Instance]:
        return [i for i in self.instances if i.removed is None and not i.draining]

    def _start_instance(self, now: float, warm: bool = False) -> None:
        inst = _Instance(created=now, ready_at=now if warm else now + self.p.cold_start_s)
        self.instances.append(inst)
        if warm:
            inst.ready = True
        else:
            self.cold_starts += 1
            self._at(inst.ready_at, "ready", inst)

    def _begin(self, now: float, inst: _Instance, req: _Req) -> None:
        inst.in_service += 1
        n = inst.in_service
        scale = self.rng.expovariate(1.0) if self.c.exponential_service else 1.0
        ttft = self.p.ttft(n) * scale
        self.ttfts.append(now - req.arrival + ttft)
        self._at(now + ttft + req.output_tokens * self.p.tpot(n) * scale, "done", inst)

    def _capacity(self, inst: _Instance) -> int:
        """Requests one instance accepts: Cloud Run's concurrency, or slots + the pod's queue."""
        if self.c.policy == "cloudrun":
            return self.c.concurrency
        return self.p.slots + self.c.max_queue

    def _route(self, now: float, req: _Req) -> bool:
        ready = [i for i in self.alive() if i.ready and i.load < self._capacity(i)]
        if not ready:
            return False
        inst = min(ready, key=lambda i: i.load)
        if inst.in_service < self.p.slots:
            self._begin(now, inst, req)
        else:
            inst.queue.append(req)
        return True

    def _drain_pending(self, now: float) -> None:
        while self.pending:
            if now - self.pending[0].arrival > self.c.pending_timeout_s:
                self.pending.popleft()
                self.rejected += 1
                continue
            if not self._route(now, self.pending[0]):
                return
            self.pending.popleft()

    # -- autoscalers --
    def _scale_to(self, now: float, desired: int) -> None:
        desired = max(self.c.min_instances, min(self.c.max_instances, desired))
        alive = self.alive()
        for _ in range(desired - len(alive)):
            self._start_instance(now)
        excess = len(alive) - desired
        for inst in sorted(alive, key=lambda i: (i.ready, i.load)):  # unready / idle go first
            if excess <= 0:
                break
            inst.draining = True
            excess -= 1
            self._maybe_remove(now, inst)

    def _maybe_remove(self, now: float, inst: _Instance) -> None:
        if inst.draining and inst.load == 0 and inst.removed is None:
            inst.removed = now

    def _cloudrun_desired(self) -> int:
        demand = sum(i.load for i in self.alive()) + len(self.pending)
        return math.ceil(demand / (self.c.concurrency * self.c.target_utilization))

    def _stabilized(self, now: float, raw: int, window_s: float) -> int:
        """Scale up at once; scale down only to the highest recommendation of the window."""
        self.history.append((now, raw))
        while self.history and now - self.history[0][0] > window_s:
            self.history.popleft()
        return raw if raw >= len(self.alive()) else max(d for _, d in self.history)

    def _hpa_desired(self, now: float) -> int:
        alive = self.alive()
        current = len(alive)
        ready = [i for i in alive if i.ready]
        waiting = sum(len(i.queue) for i in ready) + len(self.pending)
        if not ready:
            return max(current, 1)
        ratio = (waiting / len(ready)) / self.c.hpa_target
        raw = current if abs(ratio - 1.0) <= self.c.hpa_tolerance else math.ceil(current * ratio)
        return self._stabilized(now, raw, self.c.stabilization_s)

    def _tick(self, now: float) -> None:
        if self.c.policy == "cloudrun":
            desired = self._stabilized(now, self._cloudrun_desired(), self.c.scale_in_window_s)
            self._scale_to(now, desired)
        else:
            self._scale_to(now, self._hpa_desired(now))
        self._drain_pending(now)
        dt = max(now - self._last_sample, 1e-9)
        alive = self.alive()
        queued = sum(len(i.queue) for i in alive) + len(self.pending)
        ready = sum(1 for i in alive if i.ready)
        self.timeline.append(
            (now, self._arrived_since_sample / dt, ready, len(alive) - ready, queued)
        )
        self._arrived_since_sample, self._last_sample = 0, now

    # -- the run --
    def run(self, trace: list[Arrival]) -> SimResult:
        for _ in range(self.c.min_instances):
            self._start_instance(0.0, warm=True)
        for a in trace:
            self._at(a.t, "arrive", _Req(a.t, max(1, a.output_tokens)))
        period = self.c.eval_period_s if self.c.policy == "cloudrun" else self.c.sync_period_s
        self._at(0.0, "tick")
        last_arrival = trace[-1].t if trace else 0.0
        now = 0.0
        while self.events:
            now, _, kind, obj = heapq.heappop(self.events)
            if kind == "arrive":
                self._arrived_since_sample += 1
                if not self._route(now, obj):
                    if self.c.policy == "hpa" and any(i.ready for i in self.alive()):
                        self.rejected += 1  # every pod's queue is full: 503
                    else:
                        self.pending.append(obj)
                        if self.c.policy == "cloudrun":
                            up = max(self._cloudrun_desired(), len(self.alive()), 1)
                            self._scale_to(now, up)  # scale out at once, never in
            elif kind == "done":
                inst = obj
                inst.in_service -= 1
                if inst.queue:
                    self._begin(now, inst, inst.queue.popleft())
                self._maybe_remove(now, inst)
                self._drain_pending(now)
            elif kind == "ready":
                if obj.removed is None:
                    obj.ready = True
                    self._drain_pending(now)
            elif kind == "tick":
                self._tick(now)
                busy = self.pending or any(i.load for i in self.instances if i.removed is None)
                if now < last_arrival or busy:
                    self._at(now + period, "tick")
        self.rejected += len(self.pending)
        return self._result(now)

    def _result(self, end: float) -> SimResult:
        seconds = sum(
            (i.removed if i.removed is not None else end) - i.created for i in self.instances
        )
        ttfts = sorted(self.ttfts)
        peak = max((r + s for _, _, r, s, _ in self.timeline), default=0)
        return SimResult(
            completed=len(ttfts),
            rejected=self.rejected,
            ttft_p50_s=_pct(ttfts, 50),
            ttft_p99_s=_pct(ttfts, 99),
            ttft_mean_s=sum(ttfts) / len(ttfts) if ttfts else 0.0,
            cold_starts=self.cold_starts,
            peak_instances=peak,
            instance_hours=seconds / 3600.0,
            cost=seconds / 3600.0 * self.c.price_per_hour,
            timeline=self.timeline,
        )


def simulate(profile: Profile, config: SimConfig, trace: list[Arrival]) -> SimResult:
    return Fleet(profile, config).run(trace)
