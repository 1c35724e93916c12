"""`ember tune`: arguments, the ladder run, the recommendation, its JSON and plot."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ember.argtypes import integer, integer_list, number


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Run a ladder of concurrency levels against a running server (streamed requests that "
        "ignore EOS), find the knee where throughput stops growing or p99 TTFT turns up, and "
        "recommend --num-parallel, Cloud Run's --concurrency and the HPA target; the JSON "
        "feeds 'ember deploy --tune'."
    )
    p.add_argument(
        "--base-url", default="http://127.0.0.1:11434", help="server URL (default: %(default)s)"
    )
    p.add_argument("--model", default=None, help="model name (default: the first in /v1/models)")
    p.add_argument(
        "--levels",
        type=integer_list(1),
        default=[1, 2, 4, 8, 16, 32, 64],
        help="concurrency ladder, comma-separated (default: 1,2,4,8,16,32,64)",
    )
    p.add_argument(
        "--prompts-per-level", type=integer(1), default=64, help="requests per level (default: 64)"
    )
    p.add_argument("--input-len", type=integer(1), default=512, help="prompt tokens (default: 512)")
    p.add_argument(
        "--output-len", type=integer(1), default=128, help="tokens per reply (default: 128)"
    )
    p.add_argument(
        "--min-gain",
        type=number(0.0),
        default=0.10,
        help="throughput gain below which the ladder has saturated (default: 0.10)",
    )
    p.add_argument(
        "--ttft-factor",
        type=number(1.0, strict=True),
        default=3.0,
        help="p99 TTFT growth over the first level that counts as the knee (default: 3)",
    )
    p.add_argument(
        "--load-time",
        type=number(0.0),
        default=None,
        help="measured start-up seconds to record for 'ember deploy'",
    )
    p.add_argument(
        "-o", "--output", type=Path, default=Path("tune.json"), help="default: tune.json"
    )
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: OUTPUT with .png)")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ember.bench import BenchConfig, BenchError
    from ember.tune.knee import recommend, to_json
    from ember.tune.plot import plot
    from ember.tune.run import measure

    levels: list[int] = args.levels
    base = BenchConfig(
        base_url=args.base_url, model=args.model, input_len=args.input_len,
        output_len=args.output_len, ignore_eos=True,
    )  # fmt: skip
    try:  # before the ladder, which takes minutes: as `ember bench`, make the folder
        args.output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"ember: error: -o {args.output}: {e.strerror}", file=sys.stderr)
        return 2
    try:
        points = asyncio.run(measure(base, levels, args.prompts_per_level))
    except BenchError as e:
        print(f"ember: error: {e}", file=sys.stderr)
        return 1
    rec = recommend(points, args.min_gain, args.ttft_factor)
    meta = {"base_url": args.base_url, "input_len": args.input_len, "output_len": args.output_len,
            "load_time_s": args.load_time}  # fmt: skip
    args.output.write_text(json.dumps(to_json(points, rec, meta), indent=2) + "\n")
    print(f"knee at concurrency {rec.knee}: {rec.reason}")
    print(
        f"recommended: --num-parallel {rec.num_parallel}, Cloud Run --concurrency "
        f"{rec.concurrency}, HPA target vllm:num_requests_waiting {rec.hpa_target} per pod"
    )
    print(f"wrote {args.output}")
    png = args.plot or args.output.with_suffix(".png")
    if plot(points, rec, png):
        print(f"wrote {png}")
    return 0
