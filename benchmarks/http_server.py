"""Starting `ember serve` for a benchmark and driving it: a free loopback port, waiting for
/health, and `ember bench` timed with its own CPU use (no torch imported here, so a server process
that imports this stays as light as the real one)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import urllib.request
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ember.bench import BenchConfig, BenchResult


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> float:
    """perf_counter() when /health first answers 200; exits if the server dies or times out."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"ember serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return time.perf_counter()
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("ember serve did not become ready in time")


def run_bench(config: BenchConfig) -> tuple[BenchResult, float, float]:
    """`ember bench` in this process: its result, then the CPU seconds this process (the
    client) used and the wall seconds it took."""
    from ember.bench import run_benchmark

    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = asyncio.run(run_benchmark(config))
    return result, time.process_time() - cpu0, time.perf_counter() - wall0
