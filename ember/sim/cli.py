"""`ember simulate`: arguments, the run, the report and the cold-start sweep."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from ember.argtypes import integer, number
from ember.sim.fleet import SimConfig, SimResult, simulate
from ember.sim.profile import Profile
from ember.sim.trace import Arrival, read_azure_csv, synthetic


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = SimConfig()
    src = p.add_argument_group("instance profile")
    src.add_argument("--profile", type=Path, default=None, help="'ember tune' JSON")
    src.add_argument("--slots", type=integer(1), default=8, help="num_parallel without --profile")
    src.add_argument("--ttft", type=number(0), default=0.2, help="seconds, without --profile")
    src.add_argument(
        "--tpot", type=number(0), default=0.03, help="seconds per output token, without --profile"
    )
    src.add_argument(
        "--cold-start",
        type=number(0),
        default=None,
        help="seconds from scale-out to ready (default: the profile's, or 30)",
    )
    load = p.add_argument_group("load")
    load.add_argument(
        "--trace",
        type=Path,
        default=None,
        help="Azure LLM inference CSV: TIMESTAMP,ContextTokens,GeneratedTokens",
    )
    load.add_argument(
        "--rate", type=number(0, strict=True), default=2.0, help="synthetic requests/s"
    )
    load.add_argument(
        "--duration",
        type=number(0, strict=True),
        default=3600.0,
        help="synthetic seconds (or trace prefix)",
    )
    load.add_argument(
        "--burstiness", type=number(0, strict=True), default=1.0, help="gamma shape; 1 = Poisson"
    )
    load.add_argument(
        "--burst-factor",
        type=number(0, strict=True),
        default=1.0,
        help="rate multiplier in the busy half of each period",
    )
    load.add_argument("--burst-period", type=number(0, strict=True), default=600.0)
    load.add_argument("--output-tokens", type=integer(1), default=128)
    pol = p.add_argument_group("autoscaler")
    pol.add_argument("--policy", choices=["cloudrun", "hpa"], default=d.policy)
    pol.add_argument("--min-instances", type=integer(0), default=d.min_instances)
    pol.add_argument("--max-instances", type=integer(1), default=d.max_instances)
    pol.add_argument(
        "--concurrency",
        type=integer(1),
        default=d.concurrency,
        help="Cloud Run containerConcurrency",
    )
    pol.add_argument(
        "--scale-in-window",
        type=number(0),
        default=d.scale_in_window_s,
        help="Cloud Run: seconds unneeded capacity is kept before scale-in",
    )
    pol.add_argument(
        "--sync-period",
        type=number(0, strict=True),
        default=d.sync_period_s,
        help="HPA sync period (s)",
    )
    pol.add_argument(
        "--stabilization",
        type=number(0),
        default=d.stabilization_s,
        help="HPA scale-down window (s)",
    )
    pol.add_argument(
        "--hpa-target",
        type=number(0, strict=True),
        default=d.hpa_target,
        help="waiting requests per pod",
    )
    pol.add_argument("--max-queue", type=integer(0), default=d.max_queue)
    pol.add_argument(
        "--price-per-hour",
        type=number(0),
        default=d.price_per_hour,
        help="cost of one instance-hour",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cold-start-sweep",
        default=None,
        help="comma-separated cold starts (s): what a faster start buys",
    )
    p.add_argument("-o", "--output", type=Path, default=None, help="JSON report")
    p.add_argument("--plot", type=Path, default=None, help="timeline PNG")


def _profile(args: argparse.Namespace) -> Profile:
    if args.profile is not None:
        return Profile.from_tune(args.profile, args.cold_start)
    cold = 30.0 if args.cold_start is None else args.cold_start
    return Profile.flat(args.slots, args.ttft, args.tpot, cold)


def _trace(args: argparse.Namespace) -> list[Arrival]:
    if args.trace is not None:
        return read_azure_csv(args.trace, args.duration)
    return synthetic(
        args.rate, args.duration, args.seed, output_tokens=args.output_tokens,
        burstiness=args.burstiness, burst_factor=args.burst_factor,
        burst_period_s=args.burst_period,
    )  # fmt: skip


def _config(args: argparse.Namespace) -> SimConfig:
    if args.min_instances > args.max_instances:
        raise ValueError(
            f"--min-instances {args.min_instances} is above --max-instances {args.max_instances}"
        )
    return SimConfig(
        policy=args.policy, min_instances=args.min_instances, max_instances=args.max_instances,
        concurrency=args.concurrency, scale_in_window_s=args.scale_in_window,
        sync_period_s=args.sync_period, stabilization_s=args.stabilization,
        hpa_target=args.hpa_target, max_queue=args.max_queue,
        price_per_hour=args.price_per_hour, seed=args.seed,
    )  # fmt: skip


def format_row(label: str, r: SimResult) -> str:
    return (
        f"{label:>12} {r.ttft_p50_s:9.2f} {r.ttft_p99_s:9.2f} {r.rejected:9d} "
        f"{r.cold_starts:6d} {r.peak_instances:5d} {r.instance_hours:9.2f} {r.cost:9.2f}"
    )


HEADER = f"{'':>12} {'p50 TTFT':>9} {'p99 TTFT':>9} {'rejected':>9} {'colds':>6} {'peak':>5} {'inst-h':>9} {'cost':>9}"


def run(args: argparse.Namespace) -> int:
    try:
        profile, trace, config = _profile(args), _trace(args), _config(args)
    except (OSError, ValueError, KeyError) as e:
        print(f"ember: error: {e}", file=sys.stderr)
        return 2
    print(f"{len(trace)} requests over {trace[-1].t if trace else 0:.0f} s; policy {config.policy}")
    print(HEADER)
    result = simulate(profile, config, trace)
    print(format_row(f"{profile.cold_start_s:g} s start", result))
    report: dict[str, object] = {"result": result.summary()}
    if args.cold_start_sweep:
        sweep = {}
        for raw in args.cold_start_sweep.split(","):
            cold = float(raw)
            r = simulate(replace(profile, cold_start_s=cold), config, trace)
            print(format_row(f"{cold:g} s start", r))
            sweep[f"{cold:g}"] = r.summary()
        report["cold_start_sweep"] = sweep
    if args.output is not None:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot is not None:
        from ember.sim.plot import plot_timeline

        if plot_timeline(
            result, args.plot, f"{config.policy}, cold start {profile.cold_start_s:g} s"
        ):
            print(f"wrote {args.plot}")
    return 0
