"""The engine's configuration: what model, where, and how much of everything."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ember.errors import InvalidRequestError

# Start-up progress: (phase, bytes done, bytes total). Phases in order: "cuda_init", "weights"
# (called again as weight bytes arrive), "kv_cache", "graph_capture"; bytes are 0 outside
# "weights". Called from the thread that builds the engine.
StartupProgress = Callable[[str, int, int], None]

# --kv-cache-dtype: "auto" is the model's dtype; "fp8" is "fp8_e4m3" (vLLM's names).
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")
BIG_GPU_BATCHED_TOKENS = 8192
SMALL_BATCHED_TOKENS = 2048
BIG_GPU_BYTES = 70 * 2**30


def default_batched_tokens(total_memory: int | None, device_name: str = "") -> int:
    """A step's token budget when none is given, as vLLM's server picks it: 8192 on GPUs with
    at least 70 GiB (H100, H200, MI300X; the A100 excepted, where vLLM measured larger budgets
    slower), 2048 elsewhere and on the CPU (`total_memory` None). Larger steps prefill at more of
    the GPU's matmul rate (docs/benchmarks.md); each step holding a long prefill chunk takes
    longer for the sequences decoding beside it."""
    big = total_memory is not None and total_memory >= BIG_GPU_BYTES
    return (
        BIG_GPU_BATCHED_TOKENS
        if big and "a100" not in device_name.lower()
        else SMALL_BATCHED_TOKENS
    )


@dataclass(slots=True)
class EngineArgs:
    # A model directory, or a URI (file://, s3://, gs://, http(s)://, hf://org/name[@rev]) whose
    # config and tokenizer files are fetched into cache_dir and whose weights are streamed.
    model: str
    served_model_name: str | None = None  # defaults to the directory's name
    dtype: str = "auto"  # "auto" | "float32" | "bfloat16" | "float16"
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    max_model_len: int | None = None  # default: ModelConfig.max_context_len, capped
    max_num_seqs: int = 4  # sequences scheduled at once (Ollama's num_parallel)
    # Token budget of one step; longer prefills are chunked. None: default_batched_tokens (the
    # engine core decides, once it knows the device).
    max_num_batched_tokens: int | None = None
    block_size: int = 16  # tokens per KV cache block
    num_kv_blocks: int | None = None  # default: sized from kv_cache_memory_gb / GPU memory
    kv_cache_memory_gb: float = 1.0  # CPU only: KV cache budget
    kv_cache_dtype: str = "auto"  # one of KV_CACHE_DTYPES
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    seed: int | None = 0  # None: a random seed for unseeded sampling
    load_format: str = "auto"  # "auto": the checkpoint's safetensors; "dummy": random weights
    enforce_eager: bool = False  # no CUDA graphs
    # Capture every CUDA graph size before ready; by default only the few a first request uses
    # (and the largest), the rest while idle or when a batch first needs one (graph_capture.py).
    capture_all_graphs: bool = False
    # Launch step N+1 before step N's tokens reach the CPU (see pipeline.py). On the H200 it
    # beats one-step-at-a-time at batch 1, 64 and 256 (docs/benchmarks.md, 2026-12-03). None:
    # on CUDA only (on the CPU, launching a step ahead computes it, so it only adds latency).
    async_scheduling: bool | None = None
    # Where the weights stream from when that is not `model`: the URI whose small files `model`
    # holds (set by resolved(), or by a caller that fetched them itself).
    weights: str | None = None
    cache_dir: str | None = None  # remote models' local files; default $EMBER_HOME/cache
    cache_weights: bool = True  # write remote weights through to cache_dir while they stream
    # The local weights are being read ahead into the page cache (loader/prefetch.py): read
    # them buffered, not with O_DIRECT, which would go back to the disk for what is cached.
    weights_prefetched: bool = False
    # In-process only: a callable does not cross to the core's process, whose client forwards
    # the core's progress messages to it instead (core_client.py).
    progress: StartupProgress | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Sizes that must be positive; with 0 the scheduler would schedule nothing, forever."""
        for name in ("max_num_seqs", "block_size"):
            _check_positive_int(name, getattr(self, name))
        for name in ("max_num_batched_tokens", "num_kv_blocks", "max_model_len"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        if not (_is_number(self.kv_cache_memory_gb) and self.kv_cache_memory_gb > 0):
            raise InvalidRequestError(
                f"kv_cache_memory_gb must be a number > 0, got {self.kv_cache_memory_gb!r}",
                param="kv_cache_memory_gb",
            )
        util = self.gpu_memory_utilization
        if not (_is_number(util) and 0 < util <= 1):
            raise InvalidRequestError(
                f"gpu_memory_utilization must be in (0, 1], got {util!r} (a fraction: 0.9 is 90%)",
                param="gpu_memory_utilization",
            )
        if self.seed is not None and not isinstance(self.seed, int):
            raise InvalidRequestError(
                f"seed must be an integer or None, got {self.seed!r}", param="seed"
            )

    def resolved(self) -> EngineArgs:
        """These args with `model` a local directory. A URI's config and tokenizer files are
        fetched into the cache (once per process) and `weights` is set to the URI, unless the
        cache already holds the whole model, which is then read from there."""
        if self.weights is not None:
            return self
        from ember.registry.remote import default_cache_dir, is_uri, model_files

        if not is_uri(self.model):
            return self
        cache_dir = Path(self.cache_dir) if self.cache_dir else default_cache_dir()
        files = model_files(self.model, cache_dir)
        weights = None if files.weights == str(files.config_dir) else files.weights
        return replace(self, model=str(files.config_dir), weights=weights, cache_dir=str(cache_dir))

    @property
    def weights_cache_dir(self) -> str | None:
        """The write-through cache for the weights, or None to stream them only."""
        return self.cache_dir if self.cache_weights else None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequestError(f"{name} must be an integer >= 1, got {value!r}", param=name)
