"""The engine's start-up steps that are timed and reported: CUDA init and the weights.

Each phase is reported through EngineArgs.progress as it begins (the weights also as their bytes
arrive), so that /health can say what a starting server is doing; the seconds each took are kept
in StartupTimes, which the core hands to the API side with its CoreInfo.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import torch

from ember.engine.args import EngineArgs
from ember.engine.messages import StartupTimes
from ember.errors import InvalidRequestError
from ember.loader import prepin
from ember.loader.local import LocalSource
from ember.models.base import CausalLM
from ember.models.dummy import dummy_model
from ember.models.loader import load_model


def report_phase(args: EngineArgs, phase: str, done: int = 0, total: int = 0) -> None:
    if args.progress is not None:
        args.progress(phase, done, total)


def init_cuda(args: EngineArgs, device: torch.device) -> float:
    """Seconds to create the CUDA context (0 on the CPU), timed apart from the weights."""
    if device.type != "cuda":
        return 0.0
    report_phase(args, "cuda_init")
    t0 = time.monotonic()
    torch.cuda.init()
    torch.empty(1, device=device)
    torch.cuda.synchronize(device)
    return time.monotonic() - t0


def load_weights(
    args: EngineArgs,
    model_dir: Path,
    dtype: torch.dtype,
    device: torch.device,
    startup: StartupTimes,
    alongside: Callable[[CausalLM], None] | None = None,
) -> CausalLM:
    """The model with its weights: streamed from args.weights (a URI) or model_dir, written
    through to the cache when args say so; random ones for load_format 'dummy'. `alongside`
    runs on a thread while real weights stream (load_model)."""
    report_phase(args, "weights")
    try:
        return _load(args, model_dir, dtype, device, startup, alongside)
    finally:
        prepin.release()  # slots pinned ahead and not used are freed


def _load(
    args: EngineArgs,
    model_dir: Path,
    dtype: torch.dtype,
    device: torch.device,
    startup: StartupTimes,
    alongside: Callable[[CausalLM], None] | None,
) -> CausalLM:
    if args.load_format == "dummy":
        return dummy_model(model_dir, dtype, device, args.seed or 0)
    if args.load_format != "auto":
        raise InvalidRequestError(
            f"load_format must be 'auto' or 'dummy', got {args.load_format!r}"
        )

    def progress(done: int, total: int) -> None:
        startup.weights_bytes = total
        report_phase(args, "weights", done, total)

    if args.weights is None and args.weights_prefetched:
        with closing(LocalSource(model_dir, direct=False)) as source:
            return load_model(source, dtype, device, progress, alongside=alongside)
    return load_model(
        args.weights or model_dir,
        dtype,
        device,
        progress,
        cache_dir=args.weights_cache_dir,
        alongside=alongside,
    )
