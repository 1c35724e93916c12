"""`ember tune`: the knee on known curves, and a short ladder against the live tiny server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ember.tune.knee import LevelPoint, find_knee, recommend
from tests.server.serverproc import COMMON_ARGS, Server, start


def pt(c: int, tok_s: float, ttft_ms: float) -> LevelPoint:
    return LevelPoint(c, tok_s, tok_s / 100, ttft_ms, ttft_ms, 10.0, 100.0, 0)


def test_knee_where_throughput_flattens() -> None:
    points = [pt(1, 100, 50), pt(2, 190, 55), pt(4, 360, 60), pt(8, 380, 90), pt(16, 385, 200)]
    assert find_knee(points) == 2
    rec = recommend(points)
    assert (rec.knee, rec.num_parallel) == (4, 4)
    assert rec.concurrency == 8  # p99 TTFT at 8 is within 3x of the knee's; 16 is not
    assert rec.hpa_target >= 1


def test_knee_where_latency_turns_up() -> None:
    points = [pt(1, 100, 50), pt(2, 200, 60), pt(4, 400, 400)]
    assert recommend(points).knee == 2


def test_no_knee_reports_the_top() -> None:
    rec = recommend([pt(1, 100, 50), pt(2, 200, 50)])
    assert rec.knee == 2 and "extend --levels" in rec.reason


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("tune-server")
    s = start(tmp, "tune", "tiny", *COMMON_ARGS, "--num-parallel", "4", "--max-queue", "64")
    yield s
    s.stop()


def test_tune_against_live_server(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "tune.json"
    cmd = [sys.executable, "-m", "ember.cli", "tune", "--base-url", server.url,
           "--levels", "1,2,4", "--prompts-per-level", "6", "--input-len", "16",
           "--output-len", "4", "-o", str(out)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(out.read_text())
    assert [p["concurrency"] for p in data["levels"]] == [1, 2, 4]
    assert all(p["failed"] == 0 and p["output_tok_s"] > 0 for p in data["levels"])
    rec = data["recommended"]
    assert rec["num_parallel"] in (1, 2, 4) and rec["concurrency"] >= rec["num_parallel"]
    assert "recommended: --num-parallel" in r.stdout
    if "no plot" not in r.stderr:
        assert out.with_suffix(".png").stat().st_size > 0
    # The tune result feeds ember deploy.
    r = subprocess.run(
        [sys.executable, "-m", "ember.cli", "deploy", "cloudrun", "--tune", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"containerConcurrency: {rec['concurrency']}" in r.stdout


@pytest.mark.parametrize(
    "flags",
    [
        ["--levels", "a,b"],
        ["--levels", ","],
        ["--levels", "0,1"],
        ["--prompts-per-level", "0"],
        ["--input-len", "-1"],
        ["--min-gain", "-1"],
        ["--ttft-factor", "1"],
        ["--load-time", "nan"],
    ],
)
def test_tune_rejects_numbers_it_cannot_run(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from ember.cli import main

    with pytest.raises(SystemExit) as e:
        main(["tune", "--base-url", "http://127.0.0.1:9", *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {flags[0]}" in err and "Traceback" not in err


def test_tune_stops_when_requests_fail(server: Server, tmp_path: Path) -> None:
    """A ladder whose requests fail recommends nothing: it names the first error instead."""
    out = tmp_path / "sub" / "tune.json"
    cmd = [sys.executable, "-m", "ember.cli", "tune", "--base-url", server.url,
           "--model", "no-such-model", "--levels", "1,2", "--prompts-per-level", "2",
           "--input-len", "8", "--output-len", "2", "-o", str(out)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "failed at concurrency 1" in r.stderr and "not found" in r.stderr
    assert "recommended" not in r.stdout and not out.exists()


def test_knee_stops_at_failing_level() -> None:
    points = [pt(1, 100, 10), pt(2, 200, 11), replace(pt(4, 400, 12), failed=3)]
    assert find_knee(points) == 1
    assert recommend(points).concurrency == 2
