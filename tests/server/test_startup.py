"""Start-up, told truthfully: /health's phases account for the time from process start to
ready, and EMBER_STARTUP_TRACE=1 prints each step of it in order. A model served from a
directory has its weights read ahead from the first moment."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import httpx
import pytest
from serverproc import COMMON_ARGS, start

from ember import startup_trace
from ember.registry import ModelStore

STEPS = [
    "arguments parsed",
    "weights' read-ahead started",
    "server imported",
    "lifespan: model load started",
    "engine's API side imported",
    "model resolved",
    "tokenizer loaded",
    "engine core imported",
    "weights loaded",
    "KV cache allocated",
    "engine ready",
    "warmed up: ready",
]


def test_startup_trace_and_phases(tmp_path: Path, ember_home: Path) -> None:
    model_dir = ModelStore(ember_home).resolve("tiny").path
    server = start(
        tmp_path, "trace", str(model_dir), *COMMON_ARGS, env={"EMBER_STARTUP_TRACE": "1"}
    )
    try:
        startup = httpx.get(server.url + "/health", timeout=5).json()["startup"]
    finally:
        server.stop()
    lines = re.findall(r"\[ember start \+(\d+\.\d+) s api\] (.+)", server.log_path.read_text())
    steps = [step for _, step in lines]
    assert [s for s in steps if s in STEPS] == STEPS, steps
    # the server's imports, done, leave the collector's reach before the model loads
    frozen = next(i for i, s in enumerate(steps) if s.startswith("import heap frozen ("))
    assert steps.index("server imported") < frozen < steps.index("lifespan: model load started")
    times = [float(t) for t, _ in lines]
    assert times == sorted(times)
    # Every phase is counted once, the engine's torch import included (on the CPU it runs in
    # this process, after the model is resolved): their sum is the time to ready, give or take
    # the moments between them.
    phases = sum(v for k, v in startup.items() if k.endswith("_s") and k != "total_s")
    assert abs(phases - startup["total_s"]) <= 0.1 * startup["total_s"] + 0.3, startup
    assert abs(startup["total_s"] - times[-1]) <= 0.1, (startup, times[-1])


def test_trace_writes_each_step_as_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A trace step reaches stderr in one write, newline included, so a log line that another
    thread writes at the same moment cannot land inside it."""
    writes: list[str] = []

    class Recorder(io.StringIO):
        def write(self, s: str) -> int:
            writes.append(s)
            return len(s)

    monkeypatch.setenv("EMBER_STARTUP_TRACE", "1")
    monkeypatch.setattr(sys, "stderr", Recorder())
    startup_trace.trace("tokenizer loaded")
    assert len(writes) == 1, writes
    assert re.fullmatch(r"\[ember start \+\d+\.\d+ s api\] tokenizer loaded\n", writes[0])
