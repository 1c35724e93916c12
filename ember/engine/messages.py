"""The records the engine core and the API side exchange (across a process boundary on CUDA).

Nothing here imports torch: the API process of `ember serve` on CUDA never needs it, and not
importing it there takes seconds off the start.
"""

from __future__ import annotations

from dataclasses import dataclass

from ember.engine.logprobs import PositionLogprobs


@dataclass(slots=True)
class StartupTimes:
    """The engine's start-up phases in seconds, and the weights it read."""

    cuda_init_s: float = 0.0
    load_weights_s: float = 0.0
    weights_bytes: int = 0  # 0 for --load-format dummy
    kv_cache_s: float = 0.0  # sizing (a profiling forward pass on CUDA) and allocation
    graph_capture_s: float = 0.0
    # When the core began (time.monotonic(), one clock for both processes): its imports (torch)
    # are done by then, and the API side counts the wait for them as import time.
    began_at: float = 0.0

    @property
    def weights_gb_per_s(self) -> float:
        return self.weights_bytes / self.load_weights_s / 1e9 if self.load_weights_s > 0 else 0.0

    def summary(self) -> str:
        return (
            f"CUDA init {self.cuda_init_s:.2f} s, weights {self.weights_bytes / 1e9:.3f} GB in "
            f"{self.load_weights_s:.2f} s ({self.weights_gb_per_s:.2f} GB/s), KV cache "
            f"{self.kv_cache_s:.2f} s, graph capture {self.graph_capture_s:.2f} s"
        )


@dataclass(slots=True)
class EngineCoreOutput:
    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[PositionLogprobs] | None
    finish_reason: str | None
    stop_reason: int | str | None
    num_cached_tokens: int
    first_scheduled_time: float | None
    # The request's prompt logprobs, once, with its first token (SamplingParams.prompt_logprobs).
    prompt_logprobs: list[PositionLogprobs] | None = None


@dataclass(slots=True)
class CoreInfo:
    """What the API side needs to know about a loaded core."""

    max_model_len: int
    vocab_size: int
    num_kv_blocks: int
    block_size: int
    load_weights_s: float
    device: str
    startup: StartupTimes


@dataclass(slots=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_unfinished: int
    kv_cache_usage: float  # 0..1, blocks referenced by requests
    num_used_blocks: int
    num_total_blocks: int
    prefix_cache_queries: int  # tokens, cumulative
    prefix_cache_hits: int  # tokens, cumulative
    prompt_tokens_total: int
    generation_tokens_total: int
    num_preemptions_total: int
