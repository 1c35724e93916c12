"""Prometheus metrics under vLLM's names, so HPA, KEDA and GKE Inference Gateway work unchanged.

Engine state (running / waiting requests, KV cache use, cumulative token counts) is read from
engine.stats() at scrape time by a custom collector; per-request latencies are observed by the
server from each RequestOutput's timestamps as outputs stream by, from the request's arrival at
the server (a wait for its model to load included).

The counters count what requests did: the warm-up request at each (re)load is left out, a
model's counts go on across its unloads and reloads (they never fall, as Prometheus needs), and
generated tokens are those handed to requests (not those the core ran past a stop string before
its abort arrived). Requests waiting for a model to load count as waiting; the server's own
preload does not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ember.engine.messages import EngineStats
from ember.outputs import RequestOutput

FINISH_REASONS = ("stop", "length", "abort")

# Buckets in seconds, close to vLLM's so dashboards built for vLLM read the same.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
    50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


@dataclass(slots=True)
class EngineSnapshot:
    """What the collector reads at scrape time; zeros before the engine has loaded."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    num_used_blocks: int = 0
    num_total_blocks: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    num_preemptions_total: int = 0

    def counted(self, plus: EngineSnapshot, minus: EngineSnapshot) -> EngineSnapshot:
        """This snapshot with `plus`'s counters added and `minus`'s taken away."""
        for name in COUNTER_FIELDS:
            value = getattr(self, name) + getattr(plus, name) - getattr(minus, name)
            setattr(self, name, value)
        return self


# The cumulative fields: they must only grow, across a model's unloads and reloads too.
COUNTER_FIELDS = (
    "prompt_tokens_total",
    "generation_tokens_total",
    "prefix_cache_queries",
    "prefix_cache_hits",
    "num_preemptions_total",
)


def snapshot_of(stats: EngineStats | None, waiting_for_load: int = 0) -> EngineSnapshot:
    """An engine's state as the collector reads it (zeros before it has loaded)."""
    if stats is None:
        return EngineSnapshot(num_waiting=waiting_for_load)
    return EngineSnapshot(
        num_running=stats.num_running,
        num_waiting=stats.num_waiting + waiting_for_load,
        kv_cache_usage=stats.kv_cache_usage,
        num_used_blocks=stats.num_used_blocks,
        num_total_blocks=stats.num_total_blocks,
        prompt_tokens_total=stats.prompt_tokens_total,
        generation_tokens_total=stats.generation_tokens_total,
        prefix_cache_queries=stats.prefix_cache_queries,
        prefix_cache_hits=stats.prefix_cache_hits,
        num_preemptions_total=stats.num_preemptions_total,
    )


# Model name -> its engine's state, for each model loaded (or being waited for).
Snapshots = Callable[[], Mapping[str, EngineSnapshot]]


class _EngineCollector(Collector):
    def __init__(self, snapshots: Snapshots):
        self._snapshots = snapshots

    def describe(self) -> list[Metric]:
        return []  # metrics are dynamic; skip the registry's duplicate check

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for model, snapshot in self._snapshots().items():
            for family in self._collect(model, snapshot):
                known = families.setdefault(family.name, family)
                if known is not family:
                    known.samples.extend(family.samples)
        yield from families.values()

    def _collect(
        self, model: str, s: EngineSnapshot
    ) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        labels = [model]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=["model_name"])
            g.add_metric(labels, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=["model_name"])
            c.add_metric(labels, value)
            return c

        yield gauge("vllm:num_requests_running", "Requests in the running batch.", s.num_running)
        yield gauge(
            "vllm:num_requests_waiting",
            "Requests waiting to be scheduled, including those waiting for the model to load.",
            s.num_waiting,
        )
        yield gauge(
            "vllm:kv_cache_usage_perc",
            "Fraction of KV cache blocks in use (0..1).",
            s.kv_cache_usage,
        )
        yield gauge(  # the name vLLM used before 0.10, which older gateways still read
            "vllm:gpu_cache_usage_perc",
            "Fraction of KV cache blocks in use (0..1); vllm:kv_cache_usage_perc's old name.",
            s.kv_cache_usage,
        )
        yield gauge("ember:kv_cache_used_blocks", "KV cache blocks in use.", s.num_used_blocks)
        yield gauge("ember:kv_cache_total_blocks", "KV cache blocks in all.", s.num_total_blocks)
        yield counter("vllm:prompt_tokens", "Prompt tokens processed.", s.prompt_tokens_total)
        yield counter("vllm:generation_tokens", "Generated tokens.", s.generation_tokens_total)
        yield counter(
            "vllm:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
            s.prefix_cache_queries,
        )
        yield counter(
            "vllm:prefix_cache_hits",
            "Prompt tokens found in the prefix cache.",
            s.prefix_cache_hits,
        )
        yield counter(
            "vllm:num_preemptions",
            "Requests preempted for KV cache space.",
            s.num_preemptions_total,
        )


class ServerMetrics:
    def __init__(self, model_name: Callable[[], str], snapshots: Snapshots):
        """`model_name`: the primary model's name (start-up phases are its)."""
        self._model_name = model_name
        self._known: set[str] = set()  # model names whose series exist
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(snapshots))
        r = self.registry
        self.request_success = Counter(
            "vllm:request_success",
            "Finished requests, by finish reason.",
            ["model_name", "finished_reason"],
            registry=r,
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time from arrival to the first generated token.",
            ["model_name"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Time between consecutive generated tokens.",
            ["model_name"],
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Time from arrival to the last token.",
            ["model_name"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "vllm:request_queue_time_seconds",
            "Time from arrival to first being scheduled.",
            ["model_name"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )

        self.startup_phase = Gauge(
            "ember:startup_phase_seconds",
            "Seconds each start-up phase took (imports, resolve, cuda_init, weights, kv_cache, "
            "graph_capture, warmup; total is process start to ready).",
            ["model_name", "phase"],
            registry=r,
        )
        self.weights_bytes = Gauge(
            "ember:weights_bytes",
            "The primary model's weights: bytes loaded so far and in all (state=loaded|total); "
            "a load's progress, as /health reports it while it answers 503.",
            ["model_name", "state"],
            registry=r,
        )

    def set_weights(self, loaded: int, total: int) -> None:
        """Publish the primary model's weight load (0 of 0 until its files are known)."""
        name = self._model_name()
        self.weights_bytes.labels(name, "loaded").set(loaded)
        self.weights_bytes.labels(name, "total").set(total)

    def set_startup(self, phases: Mapping[str, float]) -> None:
        """Publish the start-up phases (phase -> seconds); nothing until the model is ready."""
        name = self._model_name()
        for phase, seconds in phases.items():
            self.startup_phase.labels(name, phase).set(seconds)

    def track(self, model_name: str | None = None) -> RequestTracker:
        """A tracker for one request to `model_name` (default: the primary model)."""
        name = model_name or self._model_name()
        self._ensure(name)
        return RequestTracker(self, name)

    def _ensure(self, name: str) -> None:
        """Every series of a model exists from its first scrape, at zero, as vLLM's do: a rate()
        over a series that appears only at its first event misses that event."""
        if name in self._known:
            return
        self._known.add(name)
        for reason in FINISH_REASONS:
            self.request_success.labels(name, reason)
        for histogram in (self.ttft, self.itl, self.e2e, self.queue_time):
            histogram.labels(name)

    def render(self) -> bytes:
        self._ensure(self._model_name())
        return generate_latest(self.registry)


class RequestTracker:
    """Observes one request's latencies from its stream of (delta) outputs."""

    __slots__ = ("_done", "_itl", "_m", "_name", "_prev_token_time", "_ttft_done")

    def __init__(self, metrics: ServerMetrics, model_name: str) -> None:
        self._m = metrics
        self._name = model_name
        self._itl = metrics.itl.labels(model_name)  # observed for every token: looked up once
        self._prev_token_time: float | None = None
        self._ttft_done = False
        self._done = False

    def update(self, out: RequestOutput) -> None:
        m = self._m
        name = self._name
        t = out.metrics
        new_tokens = len(out.outputs[0].token_ids) if out.outputs else 0
        if not self._ttft_done and t.first_token_time is not None:
            self._ttft_done = True
            m.ttft.labels(name).observe(max(0.0, t.first_token_time - t.arrival_time))
            if t.first_scheduled_time is not None:
                m.queue_time.labels(name).observe(max(0.0, t.first_scheduled_time - t.arrival_time))
            new_tokens -= 1  # the first token has no gap before it
            self._prev_token_time = t.first_token_time
        prev, last = self._prev_token_time, t.last_token_time
        if prev is not None and last is not None and new_tokens > 0 and last > prev:
            gap = (last - prev) / new_tokens
            for _ in range(new_tokens):
                self._itl.observe(gap)
        if last is not None:
            self._prev_token_time = last
        if out.finished:
            self._done = True
            reason = out.outputs[0].finish_reason if out.outputs else None
            m.request_success.labels(name, reason or "stop").inc()
            end = t.finished_time or t.last_token_time
            if end is not None:
                m.e2e.labels(name).observe(max(0.0, end - t.arrival_time))

    def aborted(self) -> None:
        """The server aborted the request (its client left); its last output is never read."""
        if not self._done:
            self._done = True
            self._m.request_success.labels(self._name, "abort").inc()
