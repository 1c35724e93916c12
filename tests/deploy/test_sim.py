"""The fleet simulator against cases with known answers, and its CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ember.sim.fleet import SimConfig, simulate
from ember.sim.profile import Profile
from ember.sim.trace import read_azure_csv, synthetic

PROFILE = Profile([1, 4, 8], [0.1, 0.15, 0.25], [0.02, 0.025, 0.035], slots=8, cold_start_s=30.0)


@pytest.mark.parametrize("policy", ["cloudrun", "hpa"])
def test_light_constant_load_never_scales_out(policy: str) -> None:
    # 1 req/s of 3.6 s requests: ~4 in flight on one instance with 8 slots.
    trace = synthetic(1.0, 1800.0, seed=0, output_tokens=128, constant=True)
    config = SimConfig(policy=policy, min_instances=1, max_instances=5, concurrency=16)  # type: ignore[arg-type]
    r = simulate(PROFILE, config, trace)
    assert r.cold_starts == 0 and r.peak_instances == 1 and r.rejected == 0
    assert r.completed == len(trace)


def erlang_c_wait(lam: float, mu: float, c: int) -> float:
    a = lam / mu
    tail = a**c / math.factorial(c) / (1 - a / c)
    p_wait = tail / (sum(a**k / math.factorial(k) for k in range(c)) + tail)
    return p_wait / (c * mu - lam)


@pytest.mark.parametrize(("lam", "c"), [(1.5, 2), (3.0, 4)])
def test_mmc_waiting_time(lam: float, c: int) -> None:
    """One instance with c slots, Poisson arrivals, exponential service (mean 1 s), no TTFT of
    its own: the mean TTFT is the queue wait of M/M/c."""
    profile = Profile([1], [0.0], [1.0], slots=c, cold_start_s=0.0)
    trace = synthetic(lam, 20000 / lam, seed=1, output_tokens=1)
    config = SimConfig(min_instances=1, max_instances=1, concurrency=10**6,
                       exponential_service=True, seed=2)  # fmt: skip
    r = simulate(profile, config, trace)
    assert r.ttft_mean_s == pytest.approx(erlang_c_wait(lam, 1.0, c), rel=0.12)


def test_deterministic_with_a_seed() -> None:
    def run(seed: int) -> dict[str, object]:
        trace = synthetic(4.0, 900.0, seed=seed, burst_factor=4, burst_period_s=300)
        return simulate(PROFILE, SimConfig(max_instances=6, seed=seed), trace).summary()

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_faster_cold_start_buys_latency() -> None:
    trace = synthetic(1.0, 1800.0, seed=5, burst_factor=6, burst_period_s=600)
    slow = simulate(replace(PROFILE, cold_start_s=120.0), SimConfig(), trace)
    fast = simulate(replace(PROFILE, cold_start_s=5.0), SimConfig(), trace)
    assert fast.ttft_p99_s < slow.ttft_p99_s


def test_azure_trace_and_cli(tmp_path: Path) -> None:
    csv = tmp_path / "trace.csv"
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"] + [
        f"2023-11-16 18:{m:02d}:{s:02d}.6805900,{100 + s},{20 + s}"
        for m in range(10)
        for s in range(0, 60, 3)
    ]
    csv.write_text("\n".join(rows) + "\n")
    trace = read_azure_csv(csv)
    assert trace[0].t == 0.0 and trace[1].t == pytest.approx(3.0) and trace[1].output_tokens == 23
    out, png = tmp_path / "sim.json", tmp_path / "sim.png"
    cmd = [sys.executable, "-m", "ember.cli", "simulate", "--trace", str(csv), "--policy", "hpa",
           "--min-instances", "1", "--cold-start-sweep", "5,60", "-o", str(out), "--plot", str(png)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["result"]["completed"] == len(trace)
    assert set(report["cold_start_sweep"]) == {"5", "60"}
    assert "p99 TTFT" in r.stdout
    if "no plot" not in r.stderr:
        assert png.stat().st_size > 0


def test_profile_from_tune_result(tmp_path: Path) -> None:
    levels = [
        {"concurrency": c, "ttft_p50_ms": 50.0 * c, "tpot_p50_ms": 10.0 + c} for c in (1, 2, 4, 8)
    ]
    tune = tmp_path / "tune.json"
    rec = {"num_parallel": 4, "concurrency": 8, "hpa_target": 2}
    tune.write_text(json.dumps({"levels": levels, "recommended": rec, "load_time_s": 42.0}))
    p = Profile.from_tune(tune)
    assert (p.slots, p.cold_start_s, p.concurrency) == (4, 42.0, [1, 2, 4])
    assert p.ttft(3) == pytest.approx(0.15) and p.tpot(8) == pytest.approx(0.014)


@pytest.mark.parametrize(
    "flags",
    [
        ["--slots", "0"],
        ["--concurrency", "0"],
        ["--rate", "-1"],
        ["--tpot", "-1"],
        ["--ttft", "-0.5"],
        ["--duration", "0"],
        ["--max-queue", "-1"],
        ["--min-instances", "3", "--max-instances", "2"],
    ],
)
def test_simulate_rejects_numbers_it_cannot_run(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from ember.cli import main

    try:
        code = main(["simulate", "--rate", "1", "--duration", "20", *flags])
    except SystemExit as e:  # argparse's own check of a flag's type
        code = int(e.code or 0)
    err = capsys.readouterr().err
    assert code == 2 and "ember" in err and "error:" in err
    assert flags[-2] in err and "Traceback" not in err
