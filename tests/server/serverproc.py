"""Start the real `ember serve` as a subprocess on loopback and wait for it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """One `ember serve` subprocess; its output goes to a log file shown on failure."""

    def __init__(self, log_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [sys.executable, "-m", "ember.cli", "serve", *args]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        for var in ("OLLAMA_HOST", "PORT", "EMBER_HOST", "EMBER_PORT"):
            full_env.pop(var, None)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def wait_live(self, timeout: float = START_TIMEOUT_S) -> None:
        self._wait(lambda r: r.status_code == 200, "/live", timeout)

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        self._wait(lambda r: r.status_code == 200, "/health", timeout)

    def _wait(self, ok: Callable[[httpx.Response], bool], path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ember serve exited ({self.proc.returncode}):\n{self.log()}")
            try:
                r = httpx.get(self.url + path, timeout=2.0)
                if ok(r):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{path} not ready after {timeout:.0f}s:\n{self.log()}")

    def metrics(self) -> dict[str, float]:
        """/metrics as {"name": value} summed over label sets, plus {"name:reason": value} per
        finished_reason label."""
        text = httpx.get(self.url + "/metrics", timeout=5.0).text
        values: dict[str, float] = {}
        for line in text.splitlines():
            m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
            if not m:
                continue
            name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
            values[name] = values.get(name, 0.0) + value
            reason = re.search(r'finished_reason="(\w+)"', labels)
            if reason:
                key = f"{name}:{reason.group(1)}"
                values[key] = values.get(key, 0.0) + value
        return values

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()
        return self.proc.returncode


def start(tmp: Path, name: str, *args: str, env: dict[str, str] | None = None) -> Server:
    """A started server, healthy; stopped again if it never gets there."""
    server = Server(tmp / f"{name}.log", *args, env=env)
    try:
        server.wait_healthy()
    except BaseException:
        server.stop()
        raise
    return server


# Small context and parallelism keep every request short on a 2-core CI machine.
COMMON_ARGS = ("--device", "cpu", "--dtype", "float32", "--context-length", "512")


def wait_for(cond: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Whether `cond()` came true within `timeout` seconds (polled every 50 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def idle(server: Server) -> bool:
    """No request running and no KV block held: what every request leaves behind."""
    m = server.metrics()
    return m["ember:kv_cache_used_blocks"] == 0 and m["vllm:num_requests_running"] == 0


def aborted(server: Server) -> float:
    """Requests the server counted as aborted (client gone, timeout, drain)."""
    return server.metrics().get("vllm:request_success_total:abort", 0.0)
