"""Building a model from a directory or URI: config.json + *.safetensors -> a ready CausalLM."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import torch

from ember.envflags import env_flag
from ember.errors import ModelLoadError
from ember.loader import Progress, SafetensorsStreamer, Source, StreamOptions, resolve_source
from ember.models.base import CausalLM
from ember.models.build import build_model, materialize_buffers
from ember.models.config import ModelConfig
from ember.models.fp8 import Fp8Weights
from ember.models.registry import get_model_class
from ember.models.weights import checkpoint_slots, in_place
from ember.startup_trace import trace

log = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_dtype(name: str, config: ModelConfig, device: torch.device) -> torch.dtype:
    """The compute dtype for a `--dtype` value.

    "auto" is the checkpoint's dtype on GPUs (bfloat16 when config.json names none, or names
    float32, which no one serves on a GPU) and float32 on the CPU, where bf16/fp16 matmuls are slow.
    """
    key = name.lower().removeprefix("torch.")
    if key == "auto":
        if device.type == "cpu":
            return torch.float32
        stored = (config.dtype or "bfloat16").lower().removeprefix("torch.")
        stored_dtype = _DTYPES.get(stored, torch.bfloat16)
        return torch.bfloat16 if stored_dtype == torch.float32 else stored_dtype
    dtype = _DTYPES.get(key)
    if dtype is None:
        raise ModelLoadError(
            f"dtype '{name}' is not supported; use auto, float32, bfloat16 or float16"
        )
    return dtype


def early_reads() -> bool:
    """Whether the loader's readers start filling the ring before the model is built (10-25 ms
    of a warm 8B load's ~0.5 s are spent building it with the readers idle), as
    EMBER_EARLY_READS=1 asks; off by default: on an H100 it was no faster (docs/benchmarks.md,
    2026-12-05)."""
    return env_flag("EMBER_EARLY_READS", False)


LOAD_SWITCH_INTERVAL = 0.0005  # seconds; Python's default is 0.005


@contextmanager
def _prompt_gil_handoff() -> Iterator[None]:
    """While the weights stream beside other Python threads (the model's build, the kernels'
    warm-up, the rotary tables), a thread waiting for the GIL gets it within
    LOAD_SWITCH_INTERVAL instead of Python's 5 ms: each chunk's read and copy needs it briefly,
    and a busy thread would otherwise keep it a whole interval while ring slots sit idle. On the
    2-core development machine a 1.40 GB load beside a busy Python thread took 0.91-1.26 s at
    5 ms and 0.60-0.93 s at 0.5 ms, 0.43-0.49 s alone at either (benchmarks/bench_load_beside.py).
    The interval is process-wide; it is restored after."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, LOAD_SWITCH_INTERVAL))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def load_config(model: str | Path | Source) -> ModelConfig:
    """The ModelConfig of a model directory, a source URI (s3://, gs://, http(s)://, hf://) or
    an open Source."""
    if not isinstance(model, Source):
        source = resolve_source(model)
        try:
            return load_config(source)
        finally:
            source.close()
    local = model.local_dir()
    if local is not None:
        return ModelConfig.from_dir(local)
    if not model.exists("config.json"):
        model.list_files()  # an object store's missing bucket is named as such, not as a file
        raise ModelLoadError(
            f"no config.json in '{model.uri}'; a model needs the Hugging Face config.json next "
            "to its *.safetensors files"
        )
    where = model.location("config.json")
    try:
        raw = json.loads(model.read_file("config.json"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read '{where}': {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"'{where}' does not hold a JSON object")
    return ModelConfig.from_dict(raw, source=where)


class _Alongside:
    """A function of the model run on a thread beside the load; its exception is kept."""

    def __init__(self, fn: Callable[[CausalLM], None], model: CausalLM) -> None:
        self.error: BaseException | None = None

        def run() -> None:
            try:
                fn(model)
            except BaseException as e:
                self.error = e

        self.thread = threading.Thread(target=run, name="ember-alongside-load", daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join()

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error


def _stream_beside(
    model: CausalLM,
    streamer: SafetensorsStreamer,
    device: torch.device,
    alongside: Callable[[CausalLM], None] | None,
    fp8: Fp8Weights | None,
) -> int:
    """Stream the weights into `model` while, each on a thread, its rotary tables are computed
    (the stream only writes parameters) and `alongside` runs once they are (the kernels' warm-up
    runs the model). Both are joined even when the load fails; their errors are raised after a
    good load. The float8 weights of `fp8` are scaled once all are in place; returns how many."""

    def tables(m: CausalLM) -> None:
        # once the readers run: begun as the build ended, this thread's torch calls shared the
        # GIL with the readers' start (it ran 29-72 ms into a warm 8B load on the H100)
        streamer.reading.wait()
        materialize_buffers(m, device)

    buffers = _Alongside(tables, model)
    helper = None
    if alongside is not None:
        warm = alongside

        def after_buffers(m: CausalLM) -> None:
            buffers.join()
            if buffers.error is None:
                warm(m)

        helper = _Alongside(after_buffers, model)
    rename = getattr(model, "checkpoint_name", None)
    dequantized = 0
    try:
        slots = checkpoint_slots(model)
        with closing(streamer.stream(in_place(slots, rename))) as weights:
            model.load_weights(weights if fp8 is None else fp8.keep_scales(weights))
        if fp8 is not None:
            dequantized = fp8.dequantize(slots, rename)
        trace("weights streamed")
    finally:
        streamer.reading.set()  # (a load that failed before reading: the thread must not wait)
        buffers.join()  # nothing outlives the call
        if helper is not None:
            helper.join()
    buffers.raise_if_failed()
    if helper is not None:
        helper.raise_if_failed()
    return dequantized


def load_model(
    model_dir: str | Path | Source,
    dtype: torch.dtype,
    device: torch.device,
    progress: Progress | None = None,
    *,
    cache_dir: str | Path | None = None,
    options: StreamOptions | None = None,
    alongside: Callable[[CausalLM], None] | None = None,
) -> CausalLM:
    """Build the model of `model_dir` on `device` in `dtype`, stream its safetensors weights into
    the parameters in place and return it in eval mode.

    `model_dir` is a local directory, a URI (file://, s3://, gs://, http(s)://,
    hf://org/name[@revision]) or a Source (which stays open). `progress(bytes_done, bytes_total)`
    is called as weights arrive. With `cache_dir`, a remote model is written through to a local
    copy there and read from it next time. An FP8 checkpoint is dequantized to `dtype` in place
    once its weights are in (models/fp8.py). Raises ModelLoadError for anything the user must
    fix; nothing half-loaded is returned.

    `alongside(model)` runs on a thread while the weights stream, once the parameters exist
    (their values are not final until the load returns): the engine warms its kernels there.
    It is joined before this returns, and what it raised is raised after a good load.
    """
    owned = not isinstance(model_dir, Source)
    source = model_dir if isinstance(model_dir, Source) else resolve_source(model_dir, cache_dir)
    try:
        config = load_config(source)
        get_model_class(config)  # an unsupported architecture fails before the headers are read
        # Headers are read and checked now: a bad file fails before anything is allocated.
        streamer = SafetensorsStreamer(source, device, options=options, progress=progress)
        fp8 = None
        if config.quantization is not None:
            fp8 = Fp8Weights.plan(config.quantization, streamer.tensors)
        early = early_reads()
        with _prompt_gil_handoff(), closing(streamer):
            if early:
                streamer.start()  # the ring fills while the model is built
            # Parameters are allocated once, uninitialised, directly on the device in the final
            # dtype.
            t_build = time.monotonic()
            model = build_model(config, dtype, device)
            build_s = time.monotonic() - t_build
            dequantized = _stream_beside(model, streamer, device, alongside, fp8)
    finally:
        if owned:
            source.close()
    stats = streamer.stats
    log.info(
        "weights: %.2f GB in %d files from %s in %.2f s (%.2f GB/s); parameters allocated in "
        "%.3f s %s; %d ring slots pinned during the load (%.3f s of the readers' time); "
        "%.2f GB copied straight out of the page cache",
        stats.bytes / 1e9,
        stats.files,
        source.uri,
        stats.seconds,
        stats.gb_per_s,
        build_s,
        "as the first reads ran" if early else "before",
        stats.pinned_slots,
        stats.pin_seconds,
        stats.mapped_bytes / 1e9,
    )
    if fp8 is not None and dequantized:
        name = str(dtype).removeprefix("torch.")
        log.info(
            "FP8 checkpoint (%s): %d weights dequantized to %s at load; memory as the %s "
            "model, no FP8 compute yet",
            fp8.format.describe(),
            dequantized,
            name,
            name,
        )
    return model.eval()
