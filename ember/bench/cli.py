"""`ember bench`: the flags (named as `vllm bench serve` names them) and the printed report.

Cheap to import: `ember --help` builds this parser.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from ember.bench.config import CHAT, COMPLETIONS, BenchConfig

DESCRIPTION = (
    "Load-test an OpenAI-compatible server (ember, vLLM, Ollama's /v1) with streamed requests and "
    "print vLLM's `bench serve` result table: throughput, TTFT, TPOT and ITL."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = BenchConfig()
    p.add_argument("--base-url", default=d.base_url, help="server URL (default: %(default)s)")
    p.add_argument("--model", default=None, help="model name (default: the first in /v1/models)")
    p.add_argument(
        "--endpoint",
        default=d.endpoint,
        help=f"{COMPLETIONS} (default) or {CHAT}",
    )
    p.add_argument(
        "--dataset", "--dataset-name", dest="dataset", default=d.dataset, choices=["random"]
    )
    p.add_argument(
        "--input-len",
        "--random-input-len",
        dest="input_len",
        type=int,
        default=d.input_len,
        help="prompt tokens (default: %(default)s)",
    )
    p.add_argument(
        "--output-len",
        "--random-output-len",
        dest="output_len",
        type=int,
        default=d.output_len,
        help="max_tokens per request (default: %(default)s)",
    )
    p.add_argument(
        "--range-ratio",
        "--random-range-ratio",
        dest="range_ratio",
        type=float,
        default=d.range_ratio,
        help="draw lengths from len*(1-r)..len*(1+r) (default: 0)",
    )
    p.add_argument("--num-prompts", type=int, default=d.num_prompts, help="default: %(default)s")
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        help="requests in flight at most (default: no limit)",
    )
    p.add_argument(
        "--request-rate",
        type=float,
        default=d.request_rate,
        help="requests/s; inf (default) sends all at once, paced by --max-concurrency",
    )
    p.add_argument(
        "--burstiness",
        type=float,
        default=d.burstiness,
        help="gamma shape of arrivals at a finite rate: 1 = Poisson, <1 burstier, >1 more even",
    )
    p.add_argument(
        "--ignore-eos", action="store_true", help="generate exactly max_tokens (vLLM extra)"
    )
    p.add_argument("--temperature", type=float, default=d.temperature, help="default: 0 (greedy)")
    p.add_argument("--top-k", type=int, default=None, help="sent when set (a vLLM extra)")
    p.add_argument("--top-p", type=float, default=None, help="sent when set")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of prompts and arrivals")
    p.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY"),
        help="sent as a Bearer token (default: $OPENAI_API_KEY)",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="model dir (or tokenizer.json) whose vocabulary random prompts draw from; "
        "without it, ids 100..899, which every model has",
    )
    p.add_argument(
        "--prompt-format",
        choices=["ids", "text"],
        default=None,
        help="random prompts as token ids (default on /v1/completions; exact lengths) or as text "
        "(default on chat; lengths from the server's usage)",
    )
    p.add_argument(
        "--metric-percentiles", default="99", help="comma-separated percentiles (default: 99)"
    )
    p.add_argument(
        "--request-timeout", type=float, default=d.request_timeout_s, help="seconds per request"
    )
    p.add_argument("--save-result", action="store_true", help="write the result as JSON")
    p.add_argument(
        "--save-detailed", action="store_true", help="include per-request lists in the JSON"
    )
    p.add_argument(
        "--result-file",
        "--result-filename",
        dest="result_file",
        default=None,
        help="JSON path (default: ember-bench-{rate}qps[-concurrency{n}]-{model}-{date}.json)",
    )
    p.add_argument("--disable-tqdm", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    try:
        percentiles = tuple(float(p) for p in args.metric_percentiles.split(",") if p.strip())
    except ValueError:
        percentiles = (math.nan,)  # rejected by BenchConfig.check with a clear message
    return BenchConfig(
        base_url=args.base_url,
        model=args.model,
        endpoint=args.endpoint,
        dataset=args.dataset,
        input_len=args.input_len,
        output_len=args.output_len,
        range_ratio=args.range_ratio,
        num_prompts=args.num_prompts,
        max_concurrency=args.max_concurrency,
        request_rate=args.request_rate,
        burstiness=args.burstiness,
        ignore_eos=args.ignore_eos,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        api_key=args.api_key,
        tokenizer=args.tokenizer,
        prompt_format=args.prompt_format,
        percentiles=percentiles,
        request_timeout_s=args.request_timeout,
        progress=not args.disable_tqdm,
    )


def run(args: argparse.Namespace) -> int:
    """`ember bench`: 0 when any request succeeded, 1 when none did or the run could not start."""
    import asyncio

    from ember.bench.config import BenchError
    from ember.bench.report import format_result, save_result, traffic_lines
    from ember.bench.runner import run_benchmark

    config = config_from_args(args)
    try:
        config.check()
        print("\n".join(traffic_lines(config)), flush=True)
        result = asyncio.run(run_benchmark(config))
    except BenchError as e:
        print(f"ember bench: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    errors = result.errors
    if errors:
        print("Failed requests during benchmark run detected (capping to 10):")
        for i, err in enumerate(errors[:10]):
            print(f"Error {i}: {err}")
    print(format_result(result), flush=True)
    if args.save_result:
        path = save_result(result, args.result_file, args.save_detailed)
        print(f"Result saved to {path}")
    if result.completed == 0:
        print(
            f"ember bench: all {result.failed} requests failed; see the errors above",
            file=sys.stderr,
        )
        return 1
    return 0
