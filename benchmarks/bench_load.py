"""Cold start: weights to the GPU, ember's loader side by side with safetensors and Run:ai.

One run on the GPU machine (< 8 minutes):
  1. writes random-weight Llama-3.1-8B-shaped safetensors (4 shards, 16.06 GB bf16) and config.json;
  2. measures the limits: the disk's parallel read bandwidth (O_DIRECT, threads, cold), page cache
     -> pinned host memory with threads (warm), and pinned host -> device copies;
  3. loads the model, each in a fresh process (the imports' heap frozen as in the engine
     process, then timed from after CUDA init, so pinning buffers and allocating count) from a
     cold page cache (caches dropped before every run) and from a warm one: ember's load_model
     (O_DIRECT auto; buffered; buffered with the ring pinned while CUDA initialises and the
     engine is imported, as `ember serve` does), safetensors load_file(device="cuda"), and
     Run:ai Model Streamer when it is importable (CPU tensors, then .to(cuda), as vLLM's
     runai_streamer load format does); every load is spot-checked against the files;
  4. prints GB/s, ratios, and each result's share of the measured limit.

    python benchmarks/bench_load.py                   # the full 8B shape on CUDA
    python benchmarks/bench_load.py --layers 2 --vocab 4096 --device cpu   # a smoke test
    python benchmarks/bench_load.py --warm-only --repeats 2   # warm loads only, two rounds
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import mmap
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import env_spec
from ember.heap import freeze_import_heap
from ember.loader import StreamOptions, prepin
from ember.loader.local import LocalSource
from ember.loader.pagecache import evict, resident_fraction
from ember.loader.source import Source
from ember.models import load_model

MiB = 1024 * 1024


# --- the model files --------------------------------------------------------------------------


def llama_8b_config(layers: int, vocab: int) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": layers,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": vocab,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 128000,
        "eos_token_id": 128001,
    }


def llama_shapes(cfg: dict[str, object]) -> dict[str, tuple[int, ...]]:
    """Checkpoint tensors of a Llama-family config; Qwen2 adds q/k/v biases, and a tied config
    has no lm_head."""
    h, inter = int(str(cfg["hidden_size"])), int(str(cfg["intermediate_size"]))
    vocab, layers = int(str(cfg["vocab_size"])), int(str(cfg["num_hidden_layers"]))
    head_dim = int(str(cfg.get("head_dim") or h // int(str(cfg["num_attention_heads"]))))
    kv = int(str(cfg["num_key_value_heads"])) * head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (inter, h),
            p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
        if cfg.get("model_type") == "qwen2":
            shapes |= {
                p + "self_attn.q_proj.bias": (h,),
                p + "self_attn.k_proj.bias": (kv,),
                p + "self_attn.v_proj.bias": (kv,),
            }
    shapes["model.norm.weight"] = (h,)
    if not cfg.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (vocab, h)
    return shapes


def write_model(root: Path, cfg: dict[str, object], shards: int, device: torch.device) -> int:
    """Random bf16 weights in `shards` files with an index; returns the weight bytes.
    Reuses files a previous run left if their sizes match."""
    shapes = llama_shapes(cfg)
    nbytes = {n: math.prod(s) * 2 for n, s in shapes.items()}
    total = sum(nbytes.values())
    groups: list[list[str]] = [[] for _ in range(shards)]
    acc = 0
    for name in shapes:  # in checkpoint order, cut into near-equal shards
        groups[min(shards - 1, acc * shards // total)].append(name)
        acc += nbytes[name]
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(cfg, indent=1))
    weight_map: dict[str, str] = {}
    gen = torch.Generator(device=device).manual_seed(0)
    for i, names in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        weight_map |= dict.fromkeys(names, file)
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for n in names:
            header[n] = {
                "dtype": "BF16",
                "shape": list(shapes[n]),
                "data_offsets": [offset, offset + nbytes[n]],
            }
            offset += nbytes[n]
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        path = root / file
        if path.is_file() and path.stat().st_size == 8 + len(raw) + offset:
            continue
        with open(path, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            for n in names:
                t = torch.empty(shapes[n], dtype=torch.bfloat16, device=device)
                t.normal_(0.0, 0.02, generator=gen)
                f.write(t.cpu().reshape(-1).view(torch.uint8).numpy().data)
            f.flush()
            os.fsync(f.fileno())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return total


def weight_paths(root: Path) -> list[Path]:
    """The shards the index names (files of an earlier run with another --shards are not)."""
    index = json.loads((root / "model.safetensors.index.json").read_text())
    return sorted(root / f for f in set(index["weight_map"].values()))


# --- page cache -------------------------------------------------------------------------------


def drop_caches(paths: list[Path]) -> str:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        how = "drop_caches"
    except OSError:
        for p in paths:
            evict(str(p))
        how = "fadvise"
    return f"{how}, {cached_share(paths):.0%} cached after"


def cached_share(paths: list[Path]) -> float:
    total = cached = 0.0
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        size = os.fstat(fd).st_size
        cached += (resident_fraction(fd, size) or 0.0) * size
        total += size
        os.close(fd)
    return cached / total


# --- limits -----------------------------------------------------------------------------------


def parallel_read(paths: list[Path], threads: int, direct: bool, block: int = 16 * MiB) -> float:
    """GB/s reading every file with `threads` threads of `block`-byte preads (one buffer each)."""
    jobs = [(p, off) for p in paths for off in range(0, p.stat().st_size, block)]
    buffers = [mmap.mmap(-1, block) for _ in range(threads)]  # page-aligned
    flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
    fds = {p: os.open(p, flags) for p in paths}
    total = sum(p.stat().st_size for p in paths)

    def worker(k: int) -> None:
        view = memoryview(buffers[k])
        for p, off in jobs[k::threads]:
            os.preadv(fds[p], [view], off)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    seconds = time.perf_counter() - start
    for fd in fds.values():
        os.close(fd)
    return total / seconds / 1e9


def h2d_bandwidth(device: torch.device, nbytes: int = 1 << 30, reps: int = 10) -> float:
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    return nbytes * reps / (time.perf_counter() - start) / 1e9


# --- loaders, each timed in a fresh process ---------------------------------------------------


def load_ember(
    root: Path,
    device: torch.device,
    direct: bool | None,
    options: StreamOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> object:
    source = LocalSource(root, direct=direct)
    try:
        return load_model(source, torch.bfloat16, device, options=options, progress=progress)
    finally:
        source.close()


class Timeline:
    """When the loader reported each chunk's bytes handed to the copy engine (its progress
    callback), from the clock's start: whether a load loses its time ramping up, in its middle
    or in its tail."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.points: list[tuple[float, int]] = []
        self.total = 0

    def __call__(self, done: int, total: int) -> None:
        self.points.append((time.perf_counter() - self.start, done))
        self.total = total

    def at(self, share: float) -> float:
        """Seconds until `share` of the bytes were handed over."""
        want = share * self.total
        return next((t for t, done in self.points if done >= want), float("nan"))

    def summary(self, seconds: float) -> str:
        if not self.total:
            return "timeline: no progress reported"
        t10, t50, t90, t100 = (self.at(x) for x in (0.1, 0.5, 0.9, 1.0))
        middle = 0.8 * self.total / (t90 - t10) / 1e9 if t90 > t10 else float("nan")
        return (
            f"timeline: 10% of the bytes at {1e3 * t10:.0f} ms, 50% at {1e3 * t50:.0f}, 90% at "
            f"{1e3 * t90:.0f}, all handed over at {1e3 * t100:.0f}, on the device at "
            f"{1e3 * seconds:.0f}; 10-90% at {middle:.2f} GB/s"
        )


def load_safetensors(root: Path, device: torch.device) -> object:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for p in weight_paths(root):
        out |= load_file(str(p), device=str(device))
    return out


def load_runai(root: Path, device: torch.device) -> object:
    from runai_model_streamer import SafetensorsStreamer as RunaiStreamer

    out: dict[str, torch.Tensor] = {}
    with RunaiStreamer() as streamer:
        streamer.stream_files([str(p) for p in weight_paths(root)])
        for name, tensor in streamer.get_tensors():
            out[name] = tensor.to(device)
    return out


LOADERS: dict[str, tuple[str, Callable[[Path, torch.device], object]]] = {
    "ember": ("ember (O_DIRECT when cold)", partial(load_ember, direct=None)),
    "ember-buffered": ("ember (buffered reads)", partial(load_ember, direct=False)),
    # As `ember serve`'s engine process starts: the ring's slots are pinned on a thread
    # (ember.loader.prepin) while CUDA initialises and the engine is imported, so the load
    # itself pins nothing (child() starts it before the imports).
    "ember-prepinned": ("ember (ring pinned ahead)", partial(load_ember, direct=False)),
    "safetensors": ("safetensors load_file", load_safetensors),
    "runai": ("Run:ai Model Streamer", load_runai),
}


def runai_available() -> bool:
    try:
        import runai_model_streamer  # noqa: F401
    except Exception as exc:
        print(f"Run:ai Model Streamer not available: {exc}")
        return False
    return True


@dataclass
class Result:
    name: str
    cache: str
    seconds: float
    gbps: float


class LoadTrace:
    """BENCH_LOAD_TRACE=1: the reader threads' pinning, slot waits, reads and chunks' copies,
    and the loading thread's build, bind and first finished tensor, timed (the loader's methods
    wrapped in this process), printed as 25 ms buckets from the clock's start (bytes read in
    GB/s, reads, pins and chunks' copies in flight) and as each thread's own first steps. Where a
    fresh process's first 10% of the bytes go."""

    BUCKET = 0.025
    # each kind of event and its letter in the threads' lines
    LETTERS: ClassVar[dict[str, str]] = {
        "pin": "p",
        "wait": "w",
        "read": "r",
        "chunk": "c",
        "register": "g",
        "enqueue": "e",
        "build": "B",
        "buffers": "m",
        "slots": "s",
        "open": "o",
        "start": "S",
        "bind": "X",
        "finish": "f",
    }

    def __init__(self) -> None:
        self.start = time.perf_counter()
        # kind, start, end, bytes, thread
        self.events: list[tuple[str, float, float, int, int]] = []
        self._lock = threading.Lock()

    def wrap(self, owner: object, name: str, kind: str) -> None:
        original = getattr(owner, name)

        def timed(*a: object, **kw: object) -> object:
            t0 = time.perf_counter()
            out = original(*a, **kw)
            nbytes = out if kind == "read" and isinstance(out, int) else 0
            event = (kind, t0 - self.start, time.perf_counter() - self.start, nbytes)
            with self._lock:
                self.events.append((*event, threading.get_ident()))
            return out

        setattr(owner, name, timed)

    def install(self) -> None:
        import ember.models.loader as model_loader
        from ember.loader.ring import HostRing
        from ember.loader.streamer import SafetensorsStreamer, _Readers

        self.wrap(HostRing, "_allocate", "pin")
        self.wrap(HostRing, "acquire", "wait")  # the slot's last copies awaited (and pins)
        self.wrap(LocalSource, "read_into", "read")
        self.wrap(_Readers, "_copy", "chunk")
        self.wrap(_Readers, "_register", "register")  # a mapped copier's pages registered
        self.wrap(_Readers, "_enqueue", "enqueue")  # a chunk's copies enqueued (both paths)
        self.wrap(_Readers, "bind", "bind")
        self.wrap(SafetensorsStreamer, "_finish", "finish")
        self.wrap(model_loader, "build_model", "build")
        self.wrap(model_loader, "materialize_buffers", "buffers")  # rotary tables, on a thread
        self.wrap(model_loader, "checkpoint_slots", "slots")
        self.wrap(SafetensorsStreamer, "_open_readers", "open")  # plan, ring, streams
        self.wrap(_Readers, "start", "start")

    def summary(self, until: float = 0.4, steps: int = 12) -> str:
        lines = [
            "trace: ms    read GB/s  reads  pins  chunks  regs  (in flight at the bucket's end)"
        ]
        for i in range(int(until / self.BUCKET)):
            lo, hi = i * self.BUCKET, (i + 1) * self.BUCKET
            done = sum(e[3] for e in self.events if e[0] == "read" and lo <= e[2] < hi)
            live = {
                kind: sum(1 for e in self.events if e[0] == kind and e[1] <= hi < e[2])
                for kind in ("read", "pin", "chunk", "register")
            }
            lines.append(
                f"trace: {1e3 * lo:4.0f} {done / self.BUCKET / 1e9:11.2f} {live['read']:6d}"
                f" {live['pin']:5d} {live['chunk']:7d} {live['register']:5d}"
            )
        for kind in self.LETTERS:
            ms = sorted(1e3 * (e[2] - e[1]) for e in self.events if e[0] == kind)
            if ms:
                first = min(e[1] for e in self.events if e[0] == kind)
                lines.append(
                    f"trace: {kind}: {len(ms)}, first at {1e3 * first:.1f} ms, median "
                    f"{ms[len(ms) // 2]:.2f} ms, max {ms[-1]:.1f} ms, sum {sum(ms):.0f} ms"
                )
        # each thread's first steps, start-end in ms: p pin, w slot wait, r read, c chunk's
        # copies enqueued and its slot marked, g pages registered, e copies enqueued, B model
        # build, m rotary tables, s checkpoint slots, o readers opened, S readers started, X bind,
        # f tensor finished
        threads: dict[int, list[tuple[str, float, float, int, int]]] = {}
        for event in sorted(self.events, key=lambda e: e[1]):
            threads.setdefault(event[4], []).append(event)
        for n, events in enumerate(threads.values()):
            steps_text = " ".join(
                f"{self.LETTERS[kind]}{1e3 * t0:.1f}-{1e3 * t1:.1f}"
                for kind, t0, t1, _, _ in events[:steps]
            )
            lines.append(f"trace: thread {n:2d}: {steps_text}")
        return "\n".join(lines)


def preimport(key: str, root: Path) -> None:
    """What a loader imports, imported before the clock starts: `ember serve`'s engine process
    has imported the engine, its Triton kernels and the model's class by the time the model
    arrives (and imports are not weights moving); the other loaders' packages likewise."""
    if key.startswith("ember"):
        import ember.engine.core  # noqa: F401
        from ember.engine.core_client import import_triton_kernels
        from ember.models.loader import load_config
        from ember.models.registry import get_model_class

        import_triton_kernels()
        source = LocalSource(root)
        get_model_class(load_config(source))
        source.close()
    elif key == "safetensors":
        import safetensors.torch  # noqa: F401
    elif key == "runai":
        import runai_model_streamer  # noqa: F401


def child(
    key: str,
    root: Path,
    layers: int,
    device: torch.device,
    options: StreamOptions | None,
    slots: int | None = None,
) -> None:
    """One load in this (fresh) process: timed from after CUDA init to the last byte on the
    device, so per-process costs (pinning buffers, allocating) count, CUDA init does not."""
    timeline = Timeline() if key.startswith("ember") else None
    load = LOADERS[key][1]
    if timeline is not None:  # ember's loader, in the key's read mode
        direct = None if key == "ember" else False
        load = partial(load_ember, direct=direct, options=options, progress=timeline)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("ember.models.loader").setLevel(logging.INFO)
    logging.getLogger("ember.loader.prepin").setLevel(logging.INFO)
    logging.getLogger("ember.loader.streamer").setLevel(logging.INFO)
    logging.getLogger("ember.loader.mapped_pages").setLevel(logging.INFO)  # undone, at exit
    if key == "ember-prepinned":
        # As `ember serve`'s engine process does: as soon as torch is imported, before the
        # engine's own imports (core_client.py), so the pinning overlaps them.
        ahead = slots or Source.concurrency + 4
        chunk = options.chunk_bytes if options else StreamOptions().chunk_bytes
        prepin.start(str(device), ahead, chunk, threads=Source.concurrency)
    preimport(key, root)
    freeze_import_heap()  # as the engine process does before its load, for every loader
    if device.type == "cuda":
        torch.empty(1, device=device)
        torch.cuda.synchronize()
    trace = LoadTrace() if timeline is not None and os.environ.get("BENCH_LOAD_TRACE") else None
    if trace is not None:
        trace.install()
    start = time.perf_counter()
    if timeline is not None:
        timeline.start = start
    if trace is not None:
        trace.start = start
    loaded = load(root, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if timeline is not None:
        print(timeline.summary(seconds), file=sys.stderr)
    if trace is not None:
        print(trace.summary(), file=sys.stderr)
    reference(root, layers)
    check(loaded)
    if key == "ember-prepinned":
        prepin.release()  # logs how many slots were pinned ahead, and in how long
    print(json.dumps({"seconds": seconds}))


def timed(
    key: str,
    cache: str,
    nbytes: int,
    args: argparse.Namespace,
    setting: tuple[int, int] | None = None,
    env: str = "",
    slots: int | None = None,
) -> Result | None:
    cmd = [sys.executable, __file__, "--child", key, "--dir", str(args.dir)]
    cmd += ["--layers", str(args.layers), "--vocab", str(args.vocab), "--device", args.device]
    label = LOADERS[key][0]
    if setting is not None:
        cmd += ["--chunk-mib", str(setting[0]), "--load-threads", str(setting[1])]
        label = f"ember, {setting[0]} MiB x {setting[1]} threads"
    if slots is not None:
        cmd += ["--ring-slots", str(slots)]
        label = f"{label}, {slots} slots"
        if args.chunk_mib:  # --slots-sweep at another chunk size
            cmd += ["--chunk-mib", str(args.chunk_mib)]
            label = f"{label} of {args.chunk_mib} MiB"
    if env:
        label = f"{label}, {env}"
    child_env = os.environ | env_spec(env)
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, check=False, env=child_env
    )
    if proc.returncode != 0:
        print(f"  {label:<34} {cache:<5} FAILED: {proc.stderr.strip()[-2000:]}", flush=True)
        return None
    seconds = float(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"])
    result = Result(label, cache, seconds, nbytes / seconds / 1e9)
    print(f"  {label:<34} {cache:<5} {seconds:7.2f} s {result.gbps:7.2f} GB/s", flush=True)
    for line in proc.stderr.splitlines():  # ember's own account of the load (its log line)
        if line.startswith(
            ("weights: ", "ring slots pinned ahead", "timeline: ", "trace: ", "unregistered: ")
        ):
            print(f"      {line}", flush=True)
    return result


_REFERENCE: dict[str, torch.Tensor] = {}


def _spot_names(layers: int) -> list[str]:
    last = f"model.layers.{layers - 1}."
    return [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.k_proj.weight",  # rows in the middle of a fused qkv
        last + "mlp.up_proj.weight",  # the second half of a fused gate_up
        last + "mlp.down_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]


def reference(root: Path, layers: int) -> None:
    from safetensors import safe_open

    for p in weight_paths(root):
        with safe_open(str(p), framework="pt") as f:
            for name in _spot_names(layers):
                if name in f.keys():  # noqa: SIM118
                    rows = f.get_slice(name)
                    n = rows.get_shape()[0]
                    _REFERENCE[name] = torch.cat([rows[0:3], rows[n - 3 : n]]).float()


def check(loaded: object) -> None:
    """Spot-check rows of tensors from every shard against the files (every loader, every run)."""
    from ember.models.weights import checkpoint_slots

    if isinstance(loaded, dict):
        tensors = loaded
    else:
        assert isinstance(loaded, torch.nn.Module)
        slots = checkpoint_slots(loaded)
        tensors = {n: slots[n].target() for n in _REFERENCE}
    for name, want in _REFERENCE.items():
        t = tensors[name]
        got = torch.cat([t[:3], t[-3:]]).float().cpu()
        assert torch.equal(got, want), f"{name} differs from the file"


def check_streamer(device: torch.device, tmp: Path) -> None:
    """Byte equality on the device for mixed dtypes, with and without in-place casts."""
    from safetensors.torch import load_file, save_file

    from ember.loader import SafetensorsStreamer, TensorMeta

    gen = torch.Generator().manual_seed(0)
    tensors = {
        "big.bf16": torch.randn(3000, 1001, generator=gen).to(torch.bfloat16),
        "big.f32": torch.randn(1500, 999, generator=gen),
        "f16": torch.randn(77, 33, generator=gen).to(torch.float16),
        "i64": torch.randint(-(2**40), 2**40, (1000,), generator=gen),
        "bool": torch.rand(37, 5, generator=gen) > 0.5,
        "scalar": torch.randn((), generator=gen),
        "empty": torch.empty(0, 3),
    }
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp / "model.safetensors"))
    want = load_file(str(tmp / "model.safetensors"))
    opts = StreamOptions(chunk_bytes=MiB, threads=4, slots=3)
    got = dict(SafetensorsStreamer(LocalSource(tmp), device, options=opts).stream())
    for n, w in want.items():
        g = got[n]
        assert g.device.type == device.type and g.dtype == w.dtype and g.shape == w.shape, n
        assert torch.equal(g.cpu().reshape(-1).view(torch.uint8), w.reshape(-1).view(torch.uint8))
    dests: dict[str, torch.Tensor] = {}

    def resolve(meta: TensorMeta) -> torch.Tensor | None:
        dtype = torch.float32 if meta.dtype.is_floating_point else meta.dtype
        dests[meta.name] = torch.zeros(meta.shape, dtype=dtype, device=device)
        return dests[meta.name]

    mapped = 0
    for early, copiers in ((False, 0), (True, 0), (False, 2), (True, 3)):
        opts.mapped_copiers = copiers
        streamer = SafetensorsStreamer(LocalSource(tmp), device, options=opts)
        if early:  # reads begun, and the ring filled, before the destinations exist
            streamer.start()
            time.sleep(0.05)
        dests.clear()
        got = dict(streamer.stream(resolve))
        torch.cuda.synchronize()
        for n, w in want.items():
            assert got[n] is dests[n], n
            assert torch.equal(got[n].cpu(), w.to(got[n].dtype)), n
        assert bool(streamer.stats.mapped_bytes) == bool(copiers), streamer.stats
        mapped += streamer.stats.mapped_bytes
    print(
        "  streamer on the device: bytes and casts match safetensors (reads begun early too; "
        f"with mapped copiers, {mapped / 1e6:.1f} MB copied straight out of the page cache)"
    )


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path(".bench/llama-3.1-8b-random"))
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--threads", type=int, default=16, help="threads of the disk measurement")
    ap.add_argument("--child", choices=list(LOADERS), help=argparse.SUPPRESS)
    ap.add_argument(
        "--chunk-mib", type=int, help="--slots-sweep's chunk size (default: the source's)"
    )
    ap.add_argument("--load-threads", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ring-slots", type=int, help=argparse.SUPPRESS)
    ap.add_argument(
        "--slots-sweep",
        type=int,
        nargs="+",
        metavar="N",
        help="only warm loads with the ring pinned ahead (as `ember serve` loads), with N ring "
        "slots each (the default is the readers + 4 = 20), --repeats rounds",
    )
    ap.add_argument(
        "--sweep-readers-pin",
        action="store_true",
        help="in --slots-sweep, the ring pinned by the readers during the load instead",
    )
    ap.add_argument(
        "--sweep",
        action="store_true",
        help="also load warm with other chunk sizes and thread counts, each in a fresh process",
    )
    ap.add_argument(
        "--warm-env",
        action="append",
        default=[],
        metavar="'VAR=VALUE ...'",
        help="only warm loads by ember (buffered), each in a fresh process, alternating the plain "
        "environment with each of these (repeatable), --repeats times; with --slots-sweep, "
        "its loads alternate so",
    )
    ap.add_argument(
        "--warm-only",
        action="store_true",
        help="no disk measurement and no cold loads: every loader warm, --repeats rounds",
    )
    ap.add_argument(
        "--repeats", type=int, default=3, help="rounds of --warm-env's or --warm-only's loads"
    )
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.child:
        options = None
        if args.chunk_mib or args.load_threads or args.ring_slots:  # a sweep's setting
            options = StreamOptions(
                chunk_bytes=args.chunk_mib * MiB if args.chunk_mib else StreamOptions().chunk_bytes,
                threads=args.load_threads,
                slots=args.ring_slots,
            )
        child(args.child, args.dir, args.layers, device, options, args.ring_slots)
        return
    cuda = device.type == "cuda"
    if cuda:
        props = torch.cuda.get_device_properties(device)
        print(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; cpus: {os.cpu_count()}")

    t0 = time.perf_counter()
    cfg = llama_8b_config(args.layers, args.vocab)
    nbytes = write_model(args.dir, cfg, args.shards, device)
    paths = weight_paths(args.dir)
    print(f"model: {nbytes / 1e9:.2f} GB in {len(paths)} shards ({time.perf_counter() - t0:.1f} s)")
    if cuda:
        check_streamer(device, args.dir.parent / "check")
    if args.slots_sweep:
        parallel_read(paths, args.threads, direct=False)
        cache_bw = parallel_read(paths, args.threads, direct=False)
        print(f"page cache -> host memory, {args.threads} threads: {cache_bw:.2f} GB/s")
        print(f"warm page cache ({cached_share(paths):.0%} cached), each load in a fresh process:")
        key = "ember-buffered" if args.sweep_readers_pin else "ember-prepinned"
        for _ in range(args.repeats):
            for slots in args.slots_sweep:
                for env in ["", *args.warm_env]:
                    timed(key, "warm", nbytes, args, env=env, slots=slots)
        return
    if args.warm_env:
        parallel_read(paths, args.threads, direct=False)
        print(f"warm page cache ({cached_share(paths):.0%} cached), each load in a fresh process:")
        for _ in range(args.repeats):
            for env in ["", *args.warm_env]:
                timed("ember-buffered", "warm", nbytes, args, env=env)
        return

    print("limits:")
    disk = float("nan")
    if not args.warm_only:
        print(f"  cold cache: {drop_caches(paths)}")
        disk = parallel_read(paths, args.threads, direct=True)
        print(f"  disk, cold, {args.threads} threads, O_DIRECT, 16 MiB reads: {disk:.2f} GB/s")
    parallel_read(paths, args.threads, direct=False)  # warms the cache
    cache_bw = parallel_read(paths, args.threads, direct=False)
    print(f"  page cache -> host memory, {args.threads} threads: {cache_bw:.2f} GB/s")
    h2d = h2d_bandwidth(device) if cuda else float("nan")
    print(f"  pinned host -> device, 1 GiB copies: {h2d:.2f} GB/s")

    keys = ["ember", "ember-buffered", "ember-prepinned", "safetensors"]
    if cuda and runai_available():
        keys.append("runai")
    results: list[Result | None] = []
    if not args.warm_only:
        print("cold page cache (dropped before each run), each load in a fresh process:")
        for key in keys:
            state = drop_caches(paths)
            results.append(timed(key, "cold", nbytes, args))
            print(f"    ({state})")
    print("warm page cache, each load in a fresh process:")
    parallel_read(paths, args.threads, direct=False)
    print(f"    ({cached_share(paths):.0%} cached)")
    for _ in range(args.repeats if args.warm_only else 1):
        for key in keys:
            results.append(timed(key, "warm", nbytes, args))
    if args.sweep:
        print("warm, ember (auto mode) with other settings, each in a fresh process:")
        for setting in ((8, 16), (16, 16), (16, 24), (32, 8), (32, 24), (64, 16)):
            timed("ember", "sweep", nbytes, args, setting)

    summarize([r for r in results if r is not None], disk, h2d)


def summarize(results: list[Result], disk: float, h2d: float) -> None:
    def best(name: str, cache: str) -> Result | None:
        rows = [r for r in results if r.name.startswith(name) and r.cache == cache]
        return min(rows, key=lambda r: r.seconds) if rows else None

    print(
        "\nsummary (best of each; ratio = ember's GB/s over theirs, against the auto mode when "
        "cold and ember's best when warm, where both modes read buffered):"
    )
    print(f"  {'cache':<5} {'loader':<30} {'s':>7} {'GB/s':>7} {'share of limit':>16}")
    for cache, limit, label in (("cold", disk, "disk"), ("warm", h2d, "H2D")):
        ember = best("ember (O_DIRECT" if cache == "cold" else "ember (", cache)
        for r in results:
            if r.cache != cache or r is not best(r.name, cache):
                continue
            share = f"{r.gbps / limit:.0%} of {label}" if limit == limit else "-"
            other = r.name != ember.name if ember else False
            if cache == "warm" and r.name.startswith("ember"):
                other = False  # warm, both modes read buffered: no ratio between them
            ratio = f"  ember x{ember.gbps / r.gbps:.2f}" if ember and other else ""
            print(f"  {cache:<5} {r.name:<30} {r.seconds:7.2f} {r.gbps:7.2f} {share:>16}{ratio}")


if __name__ == "__main__":
    main()
