"""A start-up timeline for diagnosis: with EMBER_STARTUP_TRACE=1, each start-up step of the
server process and of the engine core's process is printed to stderr as seconds since the
server process started (the clock both share: CLOCK_MONOTONIC, with the start from /proc).

    EMBER_STARTUP_TRACE=1 ember serve ...   # [ember start +1.234 s api] server imported

Torch-free, so that the server's first lines can use it.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from pathlib import Path

from ember.envflags import env_flag

_started_at: float | None = None  # the server process's start, on time.monotonic()'s clock


def proc_stat(pid: int | str = "self") -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (the state first), or None where
    the process is gone or there is no /proc. The name ends at the line's last ')': it may hold
    spaces and parentheses itself."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_age_s() -> float:
    """Seconds since this process started (from /proc on Linux; 0 where that is unknown)."""
    try:
        start_ticks = int((proc_stat() or [])[19])
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime_s - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def server_started_at() -> float:
    """When the server process started, on time.monotonic()'s clock (the engine's process is
    told it: set_server_started_at)."""
    global _started_at
    if _started_at is None:
        _started_at = time.monotonic() - process_age_s()
    return _started_at


def set_server_started_at(t0: float) -> None:
    global _started_at
    _started_at = t0


def enabled() -> bool:
    return env_flag("EMBER_STARTUP_TRACE", False)


def trace(step: str) -> None:
    """Print `step` with the seconds since the server process started, when tracing is on."""
    if enabled():
        at = time.monotonic() - server_started_at()
        where = "core" if multiprocessing.parent_process() is not None else "api"
        # One write of the whole line: print() writes the text and its newline apart, and a
        # log line from another thread written between them ran into the step's line.
        sys.stderr.write(f"[ember start +{at:.3f} s {where}] {step}\n")
        sys.stderr.flush()
