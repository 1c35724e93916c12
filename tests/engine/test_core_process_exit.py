"""The engine core's process never outlives `ember serve`'s: killed outright (SIGKILL, the OOM
killer), the server leaves a core that ends itself within a poll; stopped while it still starts
(SIGTERM or Ctrl-C before its HTTP handlers exist), the server kills the core and exits at once,
0 for SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ember.startup_trace import proc_stat

SCRIPT = """
import sys
import time

from ember.engine.core_client import _spawn, exit_on_signal_while_starting
from tests.engine.core_sleeper import main

core = _spawn(main)
if sys.argv[1] == "handler":
    exit_on_signal_while_starting()
assert core.from_core.recv() == "up"
print(core.process.pid, flush=True)
time.sleep(60)
"""


def _gone(pid: int) -> bool:
    """Exited (a zombie that no init has reaped yet counts)."""
    fields = proc_stat(pid)
    return fields is None or fields[0] == "Z"


def _start(mode: str) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    server = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, mode], env=env, stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    assert line.strip().isdigit(), line
    return server, int(line)


def _wait_gone(pid: int, seconds: float) -> float:
    t0 = time.monotonic()
    while not _gone(pid):
        if time.monotonic() - t0 > seconds:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"the core process {pid} outlived the server by {seconds} s")
        time.sleep(0.02)
    return time.monotonic() - t0


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_a_core_whose_server_was_killed_ends_itself() -> None:
    server, core = _start("plain")
    server.kill()
    server.wait(10)
    assert _wait_gone(core, 5.0) < 2.0


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_signal_while_starting_ends_server_and_core_at_once(
    sig: signal.Signals, code: int
) -> None:
    server, core = _start("handler")
    t0 = time.monotonic()
    server.send_signal(sig)
    assert server.wait(10) == code
    assert time.monotonic() - t0 < 2.0
    _wait_gone(core, 1.0)
