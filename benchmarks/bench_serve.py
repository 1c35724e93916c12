"""`ember serve` on one GPU through HTTP: process start -> /health 200 -> first token (with the
start-up phases /health reports), then `ember bench` (vLLM's result table) at high concurrency and
at concurrency 1.

Random weights of a real shape and a word-level tokenizer over the whole vocabulary, so every
token streams as text. By default the weights are made on the GPU (--load-format dummy);
--real-weights writes them as safetensors shards first and serves those (the first start reads
them from the page cache the writing left warm). --starts N starts the server N times (the
first may pay Triton's compiles; later ones find its cache); --cold evicts the weight files from
the page cache before each start. EMBER_STARTUP_TRACE=1 in a --start-env prints each start's
timeline (ember/startup_trace.py).

    python benchmarks/bench_serve.py --shape llama-3.1-8b
    python benchmarks/bench_serve.py --real-weights --starts 2 --start-only
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from benchmarks.common import SHAPES, dummy_model_dir, env_spec
from benchmarks.http_server import free_port, run_bench, wait_ready
from ember.engine.args import KV_CACHE_DTYPES
from ember.startup_trace import proc_stat


def startup_phases(url: str) -> str:
    with urllib.request.urlopen(url + "/health", timeout=5) as r:
        body = json.load(r)
    phases = body.get("startup") or {}
    return ", ".join(f"{k.removesuffix('_s')} {v}" for k, v in phases.items())


def first_token(url: str, model: str) -> float:
    body = json.dumps({"model": model, "prompt": "w5 w6 w7", "max_tokens": 1}).encode()
    req = urllib.request.Request(
        url + "/v1/completions", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        json.load(r)
    return time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shape", default="llama-3.1-8b", choices=sorted(SHAPES))
    ap.add_argument("--num-prompts", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--real-weights", action="store_true", help="serve safetensors files")
    ap.add_argument("--starts", type=int, default=1, help="times to start the server")
    ap.add_argument("--start-only", action="store_true", help="measure start-up alone")
    ap.add_argument(
        "--cold",
        action="store_true",
        help="with --real-weights: evict the weight files from the page cache before each start "
        "(fadvise DONTNEED; Python's and torch's libraries stay cached)",
    )
    ap.add_argument(
        "--no-async-scheduling",
        dest="async_scheduling",
        action="store_false",
        help="serve without async scheduling (on by default)",
    )
    ap.add_argument(
        "--capture-all-graphs",
        action="store_true",
        help="serve with it: every CUDA graph before ready (steady-state throughput; by default "
        "the sizes start-up leaves are captured during the first benchmark)",
    )
    ap.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES)
    ap.add_argument(
        "--sigterm-after",
        type=float,
        nargs="+",
        metavar="S",
        help="instead of serving: start the server, SIGTERM it S seconds later (still starting "
        "or loading), and print how long it took to exit and whether any of its processes "
        "outlived it; one start per value",
    )
    ap.add_argument(
        "--ollama-sampling",
        action="store_true",
        help="sample as Ollama's defaults do (temperature 0.8, top_k 40, top_p 0.9), not greedily",
    )
    ap.add_argument(
        "--start-env",
        action="append",
        metavar="SPEC",
        help="environment of a start: space-separated VAR=VALUE (or 'base' for none); "
        "repeatable, starts take them in turn (e.g. --starts 6 --start-env base "
        "--start-env EMBER_PREPIN=1: the first start also compiles Triton's kernels)",
    )
    ap.add_argument(
        "--py-spy",
        metavar="FILE",
        help="sample the server's processes with py-spy (raw stacks to FILE) during the run at "
        "full concurrency; summarize with benchmarks/stacks.py",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = dummy_model_dir(args.shape, Path(tmp))
        if args.real_weights:
            import torch

            from benchmarks.bench_load import write_model

            config = json.loads((model_dir / "config.json").read_text())
            nbytes = write_model(model_dir, config, shards=4, device=torch.device("cuda"))
            print(f"wrote {nbytes / 1e9:.2f} GB of safetensors", flush=True)
        if args.sigterm_after:
            for delay in args.sigterm_after:
                sigterm_while_starting(args, model_dir, delay)
            return
        specs = args.start_env or ["base"]
        for start in range(1, args.starts + 1):
            last = start == args.starts
            spec = specs[(start - 1) % len(specs)]
            env = env_spec(spec)
            label = f"start {start}" + (f" [{spec}]" if args.start_env else "")
            if args.cold and args.real_weights:
                label += f" (cold weights: {evict_weights(model_dir):.0%} cached)"
            serve(args, model_dir, benchmark=last and not args.start_only, label=label, env=env)


def sigterm_while_starting(args: argparse.Namespace, model_dir: Path, delay: float) -> None:
    """SIGTERM `ember serve` `delay` s after its start: it should exit at once, its engine
    process with it."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "ember.cli", "serve", str(model_dir), "--port", str(port),
        "--load-format", "auto" if args.real_weights else "dummy", "--context-length", "4096",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    time.sleep(delay)
    health = "no answer"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            health = f"{r.status} {r.read()[:160]!r}"
    except urllib.error.HTTPError as e:
        health = f"{e.code} {e.read()[:160]!r}"
    except OSError:
        pass
    family = descendants(proc.pid)
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        code: int | str = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = "still running after 60 s (killed)"
    exited = time.perf_counter() - t0
    time.sleep(1.0)
    left = [f"{pid} {comm}" for pid in family if (comm := running(pid))]
    print(
        f"SIGTERM {delay:.1f} s after start (/health then: {health}): exit {code} in "
        f"{exited:.2f} s; {len(family)} child processes before, still running 1 s later: "
        f"{left or 'none'}",
        flush=True,
    )
    for entry in left:
        os.kill(int(entry.split()[0]), signal.SIGKILL)


def running(pid: int) -> str:
    """The process's command line if it runs ('' if it exited, zombies that no init reaped
    included)."""
    fields = proc_stat(pid)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    if fields is None or fields[0] == "Z":
        return ""
    return cmdline.replace(b"\0", b" ").decode()[:120]


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (from /proc's parent links)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = proc_stat(entry.name)
        if fields is not None:
            parents[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def evict_weights(model_dir: Path) -> float:
    """Drop the model's safetensors files from the page cache; the share still cached."""
    from benchmarks.bench_load import cached_share, weight_paths
    from ember.loader.pagecache import evict

    paths = weight_paths(model_dir)
    for path in paths:
        evict(str(path))
    return cached_share(paths)


def serve(
    args: argparse.Namespace,
    model_dir: Path,
    benchmark: bool,
    label: str,
    env: dict[str, str] | None = None,
) -> None:
    from ember.bench import BenchConfig, format_result

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "ember.cli", "serve", str(model_dir),
        "--port", str(port), "--load-format", "auto" if args.real_weights else "dummy",
        "--num-parallel", str(args.concurrency), "--max-queue", "100000",
        "--context-length", "4096",
        "--max-num-batched-tokens", str(args.max_num_batched_tokens),
        "--served-model-name", args.shape,
        *([] if args.async_scheduling else ["--no-async-scheduling"]),
        *(["--capture-all-graphs"] if args.capture_all_graphs else []),
        "--kv-cache-dtype", args.kv_cache_dtype,
    ]  # fmt: skip
    t_start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
    try:
        t_ready = wait_ready(url, proc, timeout=300)
        t_first = first_token(url, args.shape)
        print(
            f"{label}: process start -> /health 200: {t_ready - t_start:.2f} s; "
            f"-> first token: {t_first - t_start:.2f} s\n  phases: {startup_phases(url)}",
            flush=True,
        )
        if not benchmark:
            return
        for concurrency, num, in_len, out_len in (
            (1, 8, 128, 256),
            (args.concurrency, args.num_prompts, args.input_len, args.output_len),
        ):
            config = BenchConfig(
                base_url=url,
                model=args.shape,
                endpoint="/v1/completions",
                input_len=in_len,
                output_len=out_len,
                num_prompts=num,
                max_concurrency=concurrency,
                ignore_eos=True,
                tokenizer=str(model_dir),
                temperature=0.8 if args.ollama_sampling else 0.0,
                top_k=40 if args.ollama_sampling else None,
                top_p=0.9 if args.ollama_sampling else None,
                progress=False,
            )
            spy = start_py_spy(args.py_spy, proc.pid) if args.py_spy and concurrency > 1 else None
            result, cpu, wall = run_bench(config)
            print(format_result(result), flush=True)
            print(
                f"benchmark client: {cpu:.1f} s of CPU in {wall:.1f} s ({cpu / wall:.0%} of a core)"
            )
            if spy is not None:
                spy.wait(timeout=120)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def start_py_spy(path: str, pid: int, seconds: int = 20) -> subprocess.Popen[bytes]:
    """py-spy recording `pid` and its children (the engine core's process) for `seconds`."""
    cmd = [
        "py-spy", "record", "--pid", str(pid), "--subprocesses", "--duration", str(seconds),
        "--rate", "200", "--format", "raw", "--output", path, "--nonblocking",
    ]  # fmt: skip
    return subprocess.Popen(cmd)


if __name__ == "__main__":
    main()
