"""The engine's configuration: what model, where, and how much of everything."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class EngineArgs:
    model: str  # a Hugging Face-style model directory
    served_model_name: str | None = None  # defaults to the directory's name
    dtype: str = "auto"  # "auto" | "float32" | "bfloat16" | "float16"
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    max_model_len: int | None = None  # default: the model's max_position_embeddings, capped
    max_num_seqs: int = 4  # sequences scheduled at once (Ollama's num_parallel)
    max_num_batched_tokens: int = 2048  # token budget of one step; longer prefills are chunked
    block_size: int = 16  # tokens per KV cache block
    num_kv_blocks: int | None = None  # default: sized from kv_cache_memory_gb / GPU memory
    kv_cache_memory_gb: float = 1.0  # CPU only: KV cache budget
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    seed: int = 0
    load_format: str = "auto"  # "auto": the checkpoint's safetensors; "dummy": random weights
    enforce_eager: bool = False  # no CUDA graphs
