"""How many streamed tokens per second the API process can serve, with the GPU taken out: the
real `ember serve` (HTTP, tokenizing, detokenizing, stop strings, SSE, metrics) in front of a fake
engine core that gives every running request one token per step, either as fast as the API side
takes the steps (--step-ms 0: the API process's ceiling) or at a fixed step time (the H200's
decode step at 256 requests is ~12 ms: does the API keep up?). `ember bench` drives it from this
process, as bench_serve.py does.

    python benchmarks/bench_api.py --concurrency 256 --step-ms 0 12

Runs on the CPU; no torch in the server's engine path. The fake core is the tiny model's
tokenizer's vocabulary, so detokenization does real work.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import threading
import time
from typing import Any

from benchmarks.http_server import free_port, run_bench, wait_ready
from ember.startup_trace import proc_stat

MAIN = "benchmarks.bench_api"


class FakeCore:
    """A CoreClient: each get() is one step in which every running request gets one token."""

    def __init__(self, args: Any, step_s: float) -> None:
        from ember.engine.messages import CoreInfo, StartupTimes
        from ember.tokenizer import Tokenizer

        vocab = Tokenizer.from_dir(args.model).vocab_size
        self.info = CoreInfo(
            max_model_len=args.max_model_len or 4096,
            vocab_size=vocab,
            num_kv_blocks=1 << 16,
            block_size=16,
            load_weights_s=0.0,
            device="fake",
            startup=StartupTimes(),
        )
        self.step_s = step_s
        self._lock = threading.Lock()
        self._left: dict[str, int] = {}
        self._fresh: set[str] = set()
        self._stop = False
        self._next = time.monotonic()
        rng = random.Random(0)  # tokens drawn once: the fake's own cost stays small
        self._draws = [rng.randrange(3, vocab) for _ in range(4099)]
        self._tokens = 0

    def add(self, reqs: list[Any]) -> None:
        with self._lock:
            for r in reqs:
                self._left[r.request_id] = r.max_tokens
                self._fresh.add(r.request_id)

    def abort(self, request_ids: list[str]) -> None:
        with self._lock:
            for rid in request_ids:
                self._left.pop(rid, None)

    def get(self) -> Any:
        from ember.engine.core_client import CoreStep
        from ember.engine.messages import EngineCoreOutput, EngineStats

        while True:
            if self._stop:
                return None
            with self._lock:
                busy = bool(self._left)
            if busy:
                break
            time.sleep(0.001)
        if self.step_s > 0:
            self._next = max(self._next + self.step_s, time.monotonic())
            time.sleep(max(0.0, self._next - time.monotonic()))
        now = time.monotonic()
        outputs: list[EngineCoreOutput] = []
        with self._lock:
            for rid, left in list(self._left.items()):
                finish = "length" if left <= 1 else None
                if finish:
                    del self._left[rid]
                else:
                    self._left[rid] = left - 1
                first = now if rid in self._fresh else None
                self._fresh.discard(rid)
                token = self._draws[(self._tokens + len(outputs)) % len(self._draws)]
                outputs.append(EngineCoreOutput(rid, [token], None, finish, None, 0, first))
            running = len(self._left)
        self._tokens += len(outputs)
        stats = EngineStats(running, 0, running, 0.0, 0, 1 << 16, 0, 0, 0, self._tokens, 0)
        return CoreStep(outputs, stats)

    def shutdown(self) -> None:
        self._stop = True


def serve_with_fake_core(port: int, step_s: float) -> None:
    """This process: `ember serve` (the built-in tiny model's tokenizer) on a fake core."""
    import ember.engine.async_engine as async_engine

    def fake(args: Any) -> FakeCore:
        return FakeCore(args, step_s)

    async_engine.InprocCoreClient = fake  # type: ignore[assignment,misc]
    async_engine.MPCoreClient = fake  # type: ignore[assignment,misc]
    from ember.cli import main

    flags = ["--port", str(port), "--device", "cpu", "--num-parallel", "1024"]
    sys.exit(main(["serve", *flags, "--max-queue", "100000"]))


def run(args: argparse.Namespace, step_ms: float) -> None:
    from ember.bench import BenchConfig, format_result

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", MAIN, "--serve", str(port), "--step-ms", str(step_ms)]
    proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        wait_ready(url, proc, timeout=120)
        config = BenchConfig(
            base_url=url,
            model="tiny",
            endpoint=args.endpoint,
            input_len=args.input_len,
            output_len=args.output_len,
            num_prompts=args.num_prompts,
            max_concurrency=args.concurrency,
            ignore_eos=True,
            progress=False,
        )
        server_cpu0 = _cpu_seconds(proc.pid)
        result, cpu, wall = run_bench(config)
        server_cpu = _cpu_seconds(proc.pid) - server_cpu0
        print(f"--- fake core, step {step_ms:g} ms, {args.concurrency} streams, {args.endpoint}")
        print(format_result(result), flush=True)
        print(
            f"API process: {server_cpu:.1f} s of CPU in {wall:.1f} s "
            f"({server_cpu / wall:.0%} of a core); benchmark client: {cpu / wall:.0%} of a core; "
            f"machine: {os.cpu_count()} CPUs",
            flush=True,
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its threads (Linux /proc)."""
    fields = proc_stat(pid)
    assert fields is not None, f"process {pid} is gone"
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--step-ms", type=float, nargs="+", default=[0.0, 12.0])
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--num-prompts", type=int, default=512)
    ap.add_argument("--input-len", type=int, default=32)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--endpoint", default="/v1/completions")
    args = ap.parse_args()
    if args.serve is not None:
        serve_with_fake_core(args.serve, args.step_ms[0] / 1000)
        return
    for step_ms in args.step_ms:
        run(args, step_ms)


if __name__ == "__main__":
    main()
