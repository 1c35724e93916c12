"""The `peak` section of gpu_check.py: the KV budget's forward pass through a few layers
(ModelConfig.memory_sample_layers) must reach the memory peak of the whole stack, and how long
each takes (the measuring pass is on `ember serve`'s start path).

Llama-3.1-8B and Qwen2.5-0.5B (tied embeddings) shapes with dummy weights, and the tiny Gemma 3
of the tests (sliding and global layers), each at its engine's max_num_batched_tokens.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import torch

from ember.engine.core import EngineCore

MIB = 2**20


def _measure(core: EngineCore, sample_layers: bool) -> tuple[int, float]:
    """Peak bytes above what was allocated before, and seconds, of one measuring pass."""
    profile = core._profile_run
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    profile(sample_layers=sample_layers)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    return torch.cuda.max_memory_allocated() - base, seconds


def section_peak(args: argparse.Namespace) -> bool:
    from benchmarks.common import dummy_model_dir
    from ember import LLM
    from ember.registry import ModelStore, default_home
    from tests.engine.hf_models import make_hf_model

    ok = True
    print(f"{'model':14} {'tokens':>6} {'layers':>12} {'full MiB':>9} {'sample MiB':>10} "
          f"{'full s':>7} {'sample s':>8} result")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tiny = ModelStore(default_home()).resolve("tiny").path
        gemma = Path(tmp) / "gemma3"
        make_hf_model("gemma3", tiny, gemma)
        models = [
            ("llama-3.1-8b", dummy_model_dir("llama-3.1-8b", Path(tmp)), "dummy", 8192),
            ("qwen2.5-0.5b", dummy_model_dir("qwen2.5-0.5b", Path(tmp)), "dummy", 8192),
            ("gemma3 tiny", gemma, "auto", 2048),
        ]
        for name, path, load_format, tokens in models:
            llm = LLM(
                str(path),
                dtype="bfloat16",
                device="cuda",
                load_format=load_format,
                max_model_len=4096,
                max_num_batched_tokens=tokens,
                enforce_eager=True,
                gpu_memory_utilization=0.5,
            )
            core = llm.engine.core
            _measure(core, True)  # the main thread's first calls, as the start's measuring pass
            full, full_s = _measure(core, False)
            sample, sample_s = _measure(core, True)
            layers = core.model_config.memory_sample_layers()
            passed = sample >= full
            ok &= passed
            print(
                f"{name:14} {tokens:>6} {layers!s:>12} {full / MIB:>9.1f} {sample / MIB:>10.1f} "
                f"{full_s:>7.3f} {sample_s:>8.3f} {'PASS' if passed else 'FAIL'}"
            )
            del llm, core
            gc.collect()  # the engine holds cycles: its KV cache goes only with them
            torch.cuda.empty_cache()
    return ok
