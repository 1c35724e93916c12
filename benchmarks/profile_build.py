"""What building a model and allocating the KV cache cost on the GPU, each in a fresh process.

`load_model` builds the model (its parameters allocated, uninitialised, on the device) before its
weights stream in; built on the H200 directly that took 0.07-0.13 s of a ~0.55 s warm 8B load
(docs/benchmarks.md, eighth and ninth sessions). This times, for a shape of
benchmarks.common.SHAPES:

- the modules built on the device (as load_model did before the ninth session), on the meta
  device (Python alone), and as load_model builds them now (ember.models.build: meta, then one
  allocation), each as its process's first build;
- the parameters' bytes as one allocation, and as one allocation each;
- host-to-device copies from pinned memory alone, then while another thread allocates the
  parameters (does allocating stall the copy engine?);
- a KV cache's worth of memory (--kv-gb) zeroed, as the engine allocates it, and left empty;

and repeats the allocations under PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True.

    python benchmarks/profile_build.py --shape llama-3.1-8b --kv-gb 96
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("build", "meta", "ember", "flat", "each", "copy", "kv")


def _model_class_and_config(model_dir: Path):  # type: ignore[no-untyped-def]
    from ember.models.config import ModelConfig
    from ember.models.registry import get_model_class

    config = ModelConfig.from_dir(model_dir)
    return get_model_class(config), config


def _param_sizes(model_dir: Path) -> list[int]:
    import torch

    model_class, config = _model_class_and_config(model_dir)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("meta"):
        model = model_class(config)
    return [p.numel() * p.element_size() for p in model.parameters()]


def _sync_ms(fn) -> float:  # type: ignore[no-untyped-def]
    import torch

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1000


def child(mode: str, model_dir: Path, kv_gb: float) -> None:
    import torch

    torch.cuda.init()
    torch.empty(1, device="cuda")
    torch.cuda.synchronize()
    keep: list[object] = []  # what was built or allocated stays alive until the process ends
    if mode in ("build", "meta", "ember"):
        # Timed first: the process's first build pays what any first use of an op costs.
        model_class, config = _model_class_and_config(model_dir)
        if mode == "ember":
            from ember.models.build import build_model

            ms = _sync_ms(
                lambda: keep.append(build_model(config, torch.bfloat16, torch.device("cuda")))
            )
        else:
            torch.set_default_dtype(torch.bfloat16)
            with torch.device("cuda" if mode == "build" else "meta"):
                ms = _sync_ms(lambda: keep.append(model_class(config)))
        sizes = _param_sizes(model_dir)
        print(f"{mode}: {ms:.1f} ms ({len(sizes)} parameters, {sum(sizes) / 1e9:.2f} GB)")
        return
    sizes = _param_sizes(model_dir)
    total = sum(sizes)
    if mode == "flat":
        ms = _sync_ms(lambda: keep.append(torch.empty(total, dtype=torch.uint8, device="cuda")))
        print(f"flat: one allocation of {total / 1e9:.2f} GB in {ms:.1f} ms")
    elif mode == "each":
        ms = _sync_ms(
            lambda: keep.extend(torch.empty(n, dtype=torch.uint8, device="cuda") for n in sizes)
        )
        print(f"each: {len(sizes)} allocations, {total / 1e9:.2f} GB in {ms:.1f} ms")
    elif mode == "copy":
        copy_beside_alloc(sizes)
    elif mode == "kv":
        weights = torch.empty(total, dtype=torch.uint8, device="cuda")
        layers = 32
        per = int(kv_gb * 1e9 / (2 * layers))
        for how in ("empty", "zeros"):
            fn = torch.empty if how == "empty" else torch.zeros
            ms = _sync_ms(
                lambda fn=fn: keep.extend(
                    fn(per, dtype=torch.uint8, device="cuda") for _ in range(2 * layers)
                )
            )
            print(f"kv {how}: {2 * layers} x {per / 1e9:.2f} GB in {ms:.1f} ms")
            keep.clear()
            ms_free = _sync_ms(torch.cuda.empty_cache)
            print(f"  empty_cache after it: {ms_free:.1f} ms")
        del weights


def copy_beside_alloc(sizes: list[int]) -> None:
    """4 GiB of pinned host -> device copies (64 MiB each) alone, then with a thread allocating
    `sizes` on the device at the same time."""
    import torch

    piece = 64 * 2**20
    host = torch.empty(piece, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(64 * piece, dtype=torch.uint8, device="cuda")
    stream = torch.cuda.Stream()

    def copies() -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.cuda.stream(stream):
            for i in range(64):
                dev[i * piece : (i + 1) * piece].copy_(host, non_blocking=True)
        stream.synchronize()
        return time.perf_counter() - t0

    copies()  # warm
    alone = copies()
    keep: list[torch.Tensor] = []
    alloc_s = [0.0]

    def allocate() -> None:
        t0 = time.perf_counter()
        keep.extend(torch.empty(n, dtype=torch.uint8, device="cuda") for n in sizes)
        torch.cuda.synchronize()
        alloc_s[0] = time.perf_counter() - t0

    thread = threading.Thread(target=allocate)
    thread.start()
    beside = copies()
    thread.join()
    gib = 64 * piece / 2**30
    print(
        f"copy: {gib:.0f} GiB pinned H2D alone {gib * 1.074 / alone:.1f} GB/s; beside "
        f"{len(sizes)} allocations ({sum(sizes) / 1e9:.2f} GB, {1000 * alloc_s[0]:.1f} ms on their "
        f"thread) {gib * 1.074 / beside:.1f} GB/s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shape", default="llama-3.1-8b", help="a shape of benchmarks.common.SHAPES")
    ap.add_argument("--kv-gb", type=float, default=96.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument(
        "--allocator-confs",
        nargs="+",
        default=["", "expandable_segments:True"],
        help="PYTORCH_CUDA_ALLOC_CONF values to run under ('' for unset)",
    )
    ap.add_argument("--child", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), args.kv_gb)
        return
    from benchmarks.common import dummy_model_dir

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = dummy_model_dir(args.shape, Path(tmp))
        for conf in args.allocator_confs:
            env = dict(os.environ)
            env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
            if conf:
                env["PYTORCH_CUDA_ALLOC_CONF"] = conf
            print(f"=== PYTORCH_CUDA_ALLOC_CONF={conf or '(unset)'}", flush=True)
            for mode in args.modes:
                if conf and mode == "meta":
                    continue
                for _ in range(args.repeats):
                    cmd = [sys.executable, __file__, "--kv-gb", str(args.kv_gb)]
                    subprocess.run([*cmd, "--child", mode, str(model_dir)], env=env, check=False)


if __name__ == "__main__":
    main()
