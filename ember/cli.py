"""The `ember` command: serve, run, pull, bench, --version.

Imports are lazy so that `ember --help` and `ember --version` never import torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ember import __version__
from ember.config import ConfigError, ServeConfig, add_config_arguments, config_flags
from ember.engine.args import KV_CACHE_DTYPES

_STORE_COMMANDS = ("list", "ps", "show", "rm", "cp", "create")
_STARTUP_SWITCHES = (
    "Start-up switches, environment only: EMBER_STARTUP_TRACE=1 prints each start-up step of "
    "both processes; EMBER_PREFETCH_WEIGHTS=0 (no read-ahead of a local model's weights), "
    "EMBER_BYTECODE_CACHE=0 (no bytecode cache in EMBER_HOME where torch ships none), "
    "EMBER_PREPIN=0 (no early pinning of the loader's ring), EMBER_PIN_REGISTER=0 (pin the ring "
    "with cudaHostAlloc instead of registering huge pages), EMBER_WARM_BESIDE_LOAD=0 (no "
    "kernel warm-up beside the weights' load) and EMBER_GC_FREEZE=0 (imports left to the "
    "garbage collector) turn those off."
)
_EPILOG = (
    "Every option can also be set by its environment variable (EMBER_*, or Ollama's OLLAMA_* "
    "where one exists); flags win over EMBER_*, which win over OLLAMA_*."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ember",
        description="Serve open LLMs: a drop-in for Ollama's and vLLM's APIs.",
    )
    parser.add_argument("--version", action="version", version=f"ember {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="serve a model over Ollama's and OpenAI's (vLLM's) HTTP APIs",
        description="Serve a model over Ollama's (/api/*) and OpenAI's (/v1/*) HTTP APIs, with "
        "/health, /live and /metrics.",
        epilog=_EPILOG + " " + _STARTUP_SWITCHES,
    )
    serve.add_argument(
        "model_arg",
        nargs="?",
        metavar="MODEL",
        help="model to serve (same as --model; default: tiny)",
    )
    add_config_arguments(serve, ("model", "server", "engine"))

    run = sub.add_parser(
        "run",
        help="generate from a model in this process: one prompt, or a chat on the terminal",
        description="Load MODEL in this process and print a streamed reply to PROMPT; without "
        "PROMPT, chat on the terminal (end with /bye or end of input). Input piped in (not a "
        "terminal) is read whole: one prompt, or the text before PROMPT.",
        epilog=_EPILOG,
    )
    run.add_argument("model_arg", metavar="MODEL", help="model name or directory")
    run.add_argument(
        "prompt",
        nargs="*",
        help="prompt (words are joined with spaces); piped input comes first, as in Ollama",
    )
    run.add_argument("--num-predict", type=int, default=None, help="tokens to generate at most")
    run.add_argument("--temperature", type=float, default=None, help="sampling temperature")
    run.add_argument("--seed", type=int, default=None, help="sampling seed")
    add_config_arguments(run, ("model", "engine"))

    pull = sub.add_parser(
        "pull",
        help="copy a model from s3://, gs://, http(s)://, hf:// or a folder into the model store",
        description="Copy the model at SOURCE into the local model store as NAME (default: "
        "SOURCE's last path component, tagged latest); then 'ember serve NAME' serves it. "
        "Resumable: run it again after an interruption. sha256 is checked against the "
        "source's NAME.sha256 / SHA256SUMS files where it has them, and recorded either way.",
        epilog=_EPILOG,
    )
    pull.add_argument("source", metavar="SOURCE", help="s3://, gs://, http(s)://, hf:// or path")
    pull.add_argument("name", nargs="?", metavar="NAME", help="store name, [namespace/]model[:tag]")
    pull.add_argument("--home", default=None, help="ember's home [env: EMBER_HOME]")

    _add_store_commands(sub)

    from ember.bench.cli import DESCRIPTION, add_arguments

    bench = sub.add_parser(
        "bench", help="load-test an OpenAI-compatible server", description=DESCRIPTION
    )
    add_arguments(bench)

    warm = sub.add_parser(
        "warm",
        help="compute the KV blocks of common prompts, loaded into the prefix cache at start",
        description='Prefill the prompts (JSON lines: {"messages": [...]} or {"prompt": '
        '"..."}) and save their KV blocks in MODEL_DIR/warm_kv, in the dtype the model is '
        "served with on a GPU; `ember serve` loads them at start so the first request with such "
        "a prefix skips its prefill. `ember build --warm-prompts` runs this in the image.",
    )
    warm.add_argument("model_dir", metavar="MODEL_DIR", help="model directory")
    warm.add_argument("--prompts", required=True, type=Path, help="JSON-lines prompts file")
    warm.add_argument("-o", "--output", type=Path, default=None, help="default: MODEL_DIR/warm_kv")
    warm.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    warm.add_argument("--block-size", type=int, default=16, help="KV block size of the server")
    warm.add_argument(
        "--kv-cache-dtype",
        default=os.environ.get("EMBER_KV_CACHE_DTYPE", "auto"),
        choices=KV_CACHE_DTYPES,
        help="the server's --kv-cache-dtype (default: $EMBER_KV_CACHE_DTYPE, else auto)",
    )

    from ember.deploy import cli as deploy_cli
    from ember.sim import cli as sim_cli
    from ember.tune import cli as tune_cli

    build = sub.add_parser("build", help="write a container build context with baked weights")
    deploy_cli.add_build_arguments(build)
    deploy = sub.add_parser("deploy", help="render Cloud Run or Kubernetes manifests")
    deploy_cli.add_deploy_arguments(deploy)
    tune = sub.add_parser("tune", help="find the concurrency knee of a running server")
    tune_cli.add_arguments(tune)
    simulate = sub.add_parser("simulate", help="simulate a fleet under an autoscaler")
    sim_cli.add_arguments(simulate)
    return parser


def _add_store_commands(sub: Any) -> None:
    """list, ps, show, rm, cp, create: the model store as `ollama` users know it."""
    home_help = "ember's home [env: EMBER_HOME]; the store honours EMBER_MODELS"
    parsers = {
        "list": sub.add_parser("list", aliases=["ls"], help="list the models in the store"),
        "ps": sub.add_parser("ps", help="list the models a running 'ember serve' has loaded"),
        "show": sub.add_parser("show", help="show a model's details, parameters and system"),
        "rm": sub.add_parser("rm", help="remove models from the store"),
        "cp": sub.add_parser("cp", help="copy a model under a new name (shares its blobs)"),
        "create": sub.add_parser(
            "create",
            help="create a model from another or from a folder, with its own template, "
            "system prompt and parameters",
            description="Create NAME from --from MODEL (a store name or a model folder) or a "
            "Modelfile (FROM, SYSTEM, TEMPLATE, PARAMETER).",
        ),
    }
    for name, p in parsers.items():
        p.set_defaults(command=name)
        if name != "ps":
            p.add_argument("--home", default=None, help=home_help)
    parsers["show"].add_argument("model", metavar="MODEL")
    only = parsers["show"].add_mutually_exclusive_group()
    for part, what in (
        ("modelfile", "the model's Modelfile"),
        ("parameters", "its parameters (params.json)"),
        ("system", "its system prompt"),
        ("template", "its chat template"),
    ):
        only.add_argument(
            f"--{part}", dest="part", action="store_const", const=part, help=f"only {what}"
        )
    parsers["rm"].add_argument("models", nargs="+", metavar="MODEL")
    parsers["cp"].add_argument("source", metavar="SOURCE")
    parsers["cp"].add_argument("destination", metavar="DESTINATION")
    create = parsers["create"]
    create.add_argument("model", metavar="NAME")
    create.add_argument(
        "-f",
        "--file",
        default=None,
        metavar="MODELFILE",
        help="a Modelfile (default: ./Modelfile where there is one and --from is not given)",
    )
    create.add_argument("--from", dest="base", default=None, metavar="MODEL", help="base model")


def _store_command(args: argparse.Namespace) -> int:
    from ember.registry import commands

    config = ServeConfig.from_sources({"home": getattr(args, "home", None)}, os.environ)
    if args.command == "ps":
        host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
        return commands.ps_command(f"http://{host}:{config.port}")
    store = config.model_store()
    if args.command == "list":
        return commands.list_command(store)
    if args.command == "show":
        return commands.show_command(store, args.model, part=args.part)
    if args.command == "rm":
        return commands.rm_command(store, args.models)
    if args.command == "cp":
        return commands.cp_command(store, args.source, args.destination)
    from ember.server.store_routes import check_create_spec

    return commands.create_command(
        store, args.model, _modelfile(args.file, args.base), args.base, check=check_create_spec
    )


def _modelfile(flag: str | None, base: str | None) -> Path | None:
    """-f FILE; with neither -f nor --from, ./Modelfile where there is one (as `ollama create`)."""
    if flag:
        return Path(flag)
    default = Path("Modelfile")
    return default if base is None and default.is_file() else None


def _config(args: argparse.Namespace) -> ServeConfig:
    flags = config_flags(args)
    if args.model_arg is not None:
        flags["model"] = args.model_arg
    return ServeConfig.from_sources(flags, os.environ)


def main(argv: Sequence[str] | None = None) -> int:
    """The `ember` command. Output piped into a reader that quits early (`ember show x | head`)
    ends the command quietly, as a pipe closing is no error of the user's."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush must not fail too
        return 1


def _main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "bench":
        from ember.bench.cli import run as bench

        return bench(args)
    if args.command == "warm":
        return _warm(args)
    if args.command in ("build", "deploy", "tune", "simulate"):
        from ember.deploy import cli as deploy_cli
        from ember.sim import cli as sim_cli
        from ember.tune import cli as tune_cli

        runners = {
            "build": deploy_cli.run_build,
            "deploy": deploy_cli.run_deploy,
            "tune": tune_cli.run,
            "simulate": sim_cli.run,
        }
        return runners[args.command](args)
    try:
        if args.command in _STORE_COMMANDS:
            return _store_command(args)
        if args.command == "pull":
            from ember.registry.pull import pull_command

            pull_config = ServeConfig.from_sources({"home": args.home}, os.environ)
            return pull_command(args.source, args.name, pull_config.model_store())
        config = _config(args)
    except ConfigError as e:
        parser.exit(2, f"ember: error: {e}\n")
    if args.command == "serve":
        from ember.heap import hold_collections

        hold_collections()  # until the server is imported (ember.server.app.serve)
        from ember.engine.device_probe import expects_cuda
        from ember.startup_trace import trace

        trace("arguments parsed")
        from ember.bytecode_cache import use_bytecode_cache
        from ember.kernel_cache import use_kernel_cache

        use_bytecode_cache(config.home)  # before the heavy imports, here and in the core's process
        use_kernel_cache(config.home)
        if expects_cuda(config.device):
            from ember.engine.core_client import exit_on_signal_while_starting, prespawn_core

            prespawn_core(config.device)  # it imports torch while this process imports the server
            exit_on_signal_while_starting()  # until uvicorn's handlers replace it
            trace("engine core process spawned")
        from ember.loader.prefetch import prefetch_weights

        if prefetch_weights(config.model):  # a local directory: its weights read ahead now
            trace("weights' read-ahead started")
        from ember.server.app import serve

        trace("server imported")
        return serve(config)
    if args.command == "run":
        options = {
            "num_predict": args.num_predict,
            "temperature": args.temperature,
            "seed": args.seed,
        }
        from ember.cli_run import prompt_and_mode, run

        prompt, interactive = prompt_and_mode(args.prompt)
        return run(config, prompt, options, interactive)
    parser.error(f"unknown command {args.command!r}")
    return 2


def _warm(args: argparse.Namespace) -> int:
    from ember.engine.warm_kv import warm
    from ember.errors import EmberError

    if not args.prompts.is_file():
        print(f"Error: prompts file '{args.prompts}' not found", file=sys.stderr)
        return 1
    try:
        n = warm(
            Path(args.model_dir),
            args.prompts,
            args.output,
            args.device,
            args.block_size,
            args.kv_cache_dtype,
        )
    except EmberError as e:
        print(f"Error: {e.message}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    print(f"saved {n} warm KV blocks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
