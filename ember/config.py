"""The one server configuration object: `ServeConfig`.

Each field is filled from its CLI flag, then its `EMBER_*` environment variable, then the
Ollama-compatible `OLLAMA_*` one, then its default. Each field's metadata names its flags,
environment variables and help text, so that `ember serve --help` documents every option.
This module must stay cheap to import (no torch): `ember --help` imports it.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ember.engine.args import KV_CACHE_DTYPES

if TYPE_CHECKING:
    from ember.engine.args import EngineArgs
    from ember.registry import ModelStore

DEFAULT_PORT = 11434
DEFAULT_HOME = Path("~/.ember").expanduser()
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """A flag or environment variable has a value ember cannot use; the message names it."""


# Parsers turn one raw string into a field's value; they raise ValueError with the reason.


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"must be an integer >= {low}") from None
        if value < low:
            raise ValueError(f"must be an integer >= {low}")
        return value

    return parse


def _positive_float(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("must be a number > 0") from None
    if not value > 0:
        raise ValueError("must be a number > 0")
    return value


def _fraction(raw: str) -> float:
    value = _positive_float(raw)
    if value > 1:
        raise ValueError("must be a number in (0, 1]")
    return value


def _port(raw: str) -> int:
    value = _int_at_least(0)(raw)
    if value > 65535:
        raise ValueError("must be a port number in 0..65535")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _nonempty(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def _reasoning_parser(raw: str) -> str:
    from ember.tokenizer.reasoning import REASONING_PARSERS  # lazily: it loads the tokenizer

    value = raw.strip()
    if value not in REASONING_PARSERS:
        raise ValueError(f"unknown reasoning parser; use one of {', '.join(REASONING_PARSERS)}")
    return value


def _dtype(raw: str) -> str:
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}
    value = raw.strip().lower()
    value = aliases.get(value, value)
    return _choice("auto", "float32", "bfloat16", "float16")(value)


def _device(raw: str) -> str:
    value = raw.strip().lower()
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise ValueError("must be auto, cpu, cuda or cuda:N")
    return value


def _origins(raw: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in raw.split(",") if o.strip())


def _readable_file(raw: str) -> Path:
    path = Path(_nonempty(raw)).expanduser()
    try:
        path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read it: {e.strerror or e}") from None
    return path


def _seconds_or_off(raw: str) -> float | None:
    """Seconds > 0; 0 or "off" turns the limit off (None)."""
    if raw.strip().lower() in ("0", "off", "none"):
        return None
    try:
        return _positive_float(raw)
    except ValueError:
        raise ValueError("must be a number of seconds >= 0 (0 or 'off': no limit)") from None


_SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20}
_SIZE_UNITS |= {"mib": 2**20, "g": 2**30, "gb": 2**30, "gib": 2**30}


def _byte_size(raw: str) -> int:
    """Bytes: 1048576, 512KiB, 8MiB (units are powers of 1024)."""
    m = re.fullmatch(r"(\d+)\s*([a-z]*)", raw.strip().lower())
    if m is None or m.group(2) not in _SIZE_UNITS or int(m.group(1)) < 1:
        raise ValueError("must be a size such as 8MiB, 512KiB or a number of bytes")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


_DURATION_UNITS_S = dict(ns=1e-9, us=1e-6, ms=1e-3, s=1.0, m=60.0, h=3600.0) | {"µs": 1e-6}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(raw: str) -> float:
    """Ollama's keep_alive: a Go duration ("5m", "1h30m") or plain seconds; negative = forever.

    Returns seconds; -1.0 for "forever".
    """
    text = raw.strip()
    try:
        seconds = float(text)
    except ValueError:
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        parts = _DURATION_PART.findall(body)
        if not parts or "".join(n + u for n, u in parts) != body:
            raise ValueError("must be a duration such as 5m, 1h, 300 (seconds) or -1") from None
        seconds = sign * sum(float(n) * _DURATION_UNITS_S[u] for n, u in parts)
    if math.isnan(seconds):
        raise ValueError("must be a number of seconds or a duration, not NaN")
    return -1.0 if seconds < 0 else seconds


def parse_ollama_host(raw: str) -> tuple[str, int]:
    """OLLAMA_HOST as Ollama reads it: "0.0.0.0", "host:port", ":port" or "http://host:port"."""
    text = raw.strip()
    default_port = DEFAULT_PORT
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme not in ("http", "https"):
            raise ValueError("must be host, host:port or http(s)://host:port")
        default_port = 80 if scheme == "http" else 443
        text = rest
    text = text.split("/", 1)[0]
    if text.startswith("["):  # [ipv6]:port
        host, _, tail = text[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    port = _port(port_text) if port_text else default_port
    return host or "127.0.0.1", port


def _opt(
    default: Any,
    flags: str,
    env: str,
    help: str,
    parse: Callable[[str], Any] = _nonempty,
    group: str = "engine",
    shown: str | None = None,
    repeat: bool = False,
) -> Any:
    """A ServeConfig field: its flags and environment variables (space-separated, in order of
    precedence), help text, parser, --help group and the default as --help shows it. A `repeat`
    flag may be given several times; its values are joined with commas before parsing."""
    meta = {
        "flags": tuple(flags.split()),
        "env": tuple(env.split()),
        "help": help,
        "parse": parse,
        "group": group,
        "shown": shown,
        "repeat": repeat,
    }
    return field(default=default, metadata=meta)


@dataclass(slots=True)
class ServeConfig:
    model: str = _opt(
        "tiny",
        "--model",
        "EMBER_MODEL",
        "model to serve: a name from the model store (name[:tag]) or a model directory",
        group="model",
    )
    host: str = _opt(
        "127.0.0.1",
        "--host",
        "EMBER_HOST OLLAMA_HOST",
        "address to listen on (0.0.0.0 when $PORT is set)",
        group="server",
    )
    port: int = _opt(
        DEFAULT_PORT, "--port", "EMBER_PORT PORT OLLAMA_HOST", "port to listen on", _port, "server"
    )
    home: Path = _opt(  # noqa: RUF009 - _opt returns a dataclasses.field
        DEFAULT_HOME,
        "--home",
        "EMBER_HOME",
        "ember's home: the model store and caches",
        lambda raw: Path(_nonempty(raw)).expanduser(),
        "model",
        "~/.ember",
    )
    num_parallel: int = _opt(
        4,
        "--num-parallel --max-num-seqs",
        "EMBER_NUM_PARALLEL OLLAMA_NUM_PARALLEL",
        "requests generated at once (the engine's max_num_seqs)",
        _int_at_least(1),
    )
    max_queue: int = _opt(
        512,
        "--max-queue",
        "EMBER_MAX_QUEUE OLLAMA_MAX_QUEUE",
        "requests that may wait beyond num_parallel before the server answers 503",
        _int_at_least(0),
        "server",
    )
    context_length: int | None = _opt(
        None,
        "--context-length --max-model-len",
        "EMBER_CONTEXT_LENGTH OLLAMA_CONTEXT_LENGTH",
        "context length in tokens, prompt plus output",
        _int_at_least(1),
        shown="the model's, capped by the engine",
    )
    keep_alive: float = _opt(
        300.0,
        "--keep-alive",
        "EMBER_KEEP_ALIVE OLLAMA_KEEP_ALIVE",
        "how long the model stays loaded after a request (5m, 1h, seconds; -1 = forever)",
        parse_duration,
        "server",
        "5m",
    )
    max_loaded_models: int = _opt(
        3,
        "--max-loaded-models",
        "EMBER_MAX_LOADED_MODELS OLLAMA_MAX_LOADED_MODELS",
        "models kept loaded at once (as memory allows); a request for another waits for an "
        "idle one to be unloaded",
        _int_at_least(1),
        "server",
    )
    preload: tuple[str, ...] = _opt(
        (),
        "--preload",
        "EMBER_PRELOAD",
        "more models to load at start, comma-separated; /health is 200 once all are ready",
        _origins,
        "model",
        "none",
    )
    models_dir: Path | None = _opt(  # noqa: RUF009 - _opt returns a dataclasses.field
        None,
        "--models",
        "EMBER_MODELS",
        "where ember's model store keeps manifests, blobs and model folders (not "
        "OLLAMA_MODELS: an Ollama store there is read as it is, never written)",
        lambda raw: Path(_nonempty(raw)).expanduser(),
        "model",
        "ember's home",
    )
    origins: tuple[str, ...] = _opt(
        (),
        "--origins",
        "EMBER_ORIGINS OLLAMA_ORIGINS",
        "extra CORS origins, comma-separated (localhost origins are always allowed; * = any)",
        _origins,
        "server",
        "none",
    )
    dtype: str = _opt(
        "auto",
        "--dtype",
        "EMBER_DTYPE",
        "weight and activation dtype: auto, float32, bfloat16, float16",
        _dtype,
    )
    device: str = _opt("auto", "--device", "EMBER_DEVICE", "auto, cpu, cuda or cuda:N", _device)
    served_model_name: str | None = _opt(
        None,
        "--served-model-name",
        "EMBER_SERVED_MODEL_NAME",
        "name the model answers to in the APIs",
        group="model",
        shown="its store name, e.g. tiny:latest",
    )
    reasoning_parser: str | None = _opt(
        None,
        "--reasoning-parser",
        "EMBER_REASONING_PARSER",
        "split the model's <think>...</think> out of /v1/chat/completions replies into the "
        "message's (and stream delta's) `reasoning` and `reasoning_content` fields, and out of "
        "/v1/responses replies into a `reasoning` item, as vLLM's flag of that name: "
        "deepseek_r1 or qwen3",
        _reasoning_parser,
        group="model",
        shown="off: the thinking stays in content",
    )
    max_num_batched_tokens: int | None = _opt(
        None,
        "--max-num-batched-tokens",
        "EMBER_MAX_NUM_BATCHED_TOKENS",
        "token budget of one engine step; longer prompts are prefilled in chunks",
        _int_at_least(1),
        shown="8192 on GPUs with >= 70 GiB but the A100, else 2048 (as vLLM's server)",
    )
    block_size: int = _opt(
        16, "--block-size", "EMBER_BLOCK_SIZE", "tokens per KV cache block", _int_at_least(1)
    )
    kv_cache_memory_gb: float = _opt(
        1.0,
        "--kv-cache-memory-gb",
        "EMBER_KV_CACHE_MEMORY_GB",
        "KV cache size in GB on CPU (GPUs size it from --gpu-memory-utilization)",
        _positive_float,
    )
    kv_cache_dtype: str = _opt(
        "auto",
        "--kv-cache-dtype",
        "EMBER_KV_CACHE_DTYPE",
        "KV cache element type: auto (the model's dtype), fp8 (= fp8_e4m3) or fp8_e5m2; fp8 "
        "halves the cache's memory and the bytes decode reads, unscaled (as vLLM without "
        "calibrated scales)",
        _choice(*KV_CACHE_DTYPES),
    )
    gpu_memory_utilization: float = _opt(
        0.9,
        "--gpu-memory-utilization",
        "EMBER_GPU_MEMORY_UTILIZATION",
        "share of GPU memory ember may use for weights, activations and KV cache",
        _fraction,
    )
    load_format: str = _opt(
        "auto",
        "--load-format",
        "EMBER_LOAD_FORMAT",
        "auto: the model's safetensors; dummy: random weights of its shapes (benchmarks)",
        _choice("auto", "dummy"),
    )
    enforce_eager: bool = _opt(
        False,
        "--enforce-eager",
        "EMBER_ENFORCE_EAGER",
        "never run decode under CUDA graphs (a switch; the variable takes true/false)",
        _bool,
    )
    cache_weights: bool = _opt(
        True,
        "--cache-weights",
        "EMBER_CACHE_WEIGHTS",
        "write weights streamed from gs://, s3://, http(s):// or hf:// through to EMBER_HOME/cache "
        "so the next start reads them locally; turn it off where the disk is memory (Cloud Run) "
        "or every start is on a fresh machine (a switch; the variable takes true/false)",
        _bool,
    )
    capture_all_graphs: bool = _opt(
        False,
        "--capture-all-graphs",
        "EMBER_CAPTURE_ALL_GRAPHS",
        "capture every decode and prefill CUDA graph before /health says ready, instead of the "
        "few a first request uses, with the rest captured while idle (a switch; the variable "
        "takes true/false)",
        _bool,
    )
    async_scheduling: bool | None = _opt(
        None,
        "--async-scheduling",
        "EMBER_ASYNC_SCHEDULING",
        "schedule and launch each step before the previous one's tokens reach the CPU, hiding "
        "host time behind the GPU (by default on CUDA only: on the CPU a step launched ahead is "
        "a step computed ahead, which only delays each token; --no-async-scheduling or the "
        "variable set to false runs steps one after another)",
        _bool,
        shown="on for CUDA",
    )
    api_key: tuple[str, ...] = _opt(
        (),
        "--api-key",
        "EMBER_API_KEY",
        "API key clients must send as 'Authorization: Bearer KEY' or 'x-api-key: KEY' (repeat "
        "the flag or comma-separate for several)",
        _origins,
        "server",
        "none",
        repeat=True,
    )
    api_key_file: Path | None = _opt(  # noqa: RUF009 - _opt returns a dataclasses.field
        None,
        "--api-key-file",
        "EMBER_API_KEY_FILE",
        "file of API keys, one a line (# comments), accepted like --api-key",
        _readable_file,
        "server",
    )
    auth_oidc: str | None = _opt(
        None,
        "--auth-oidc",
        "EMBER_AUTH_OIDC",
        "accept Google-signed ID tokens (as Cloud Run IAM does) whose audience is this value, "
        "usually the service URL",
        group="server",
    )
    oidc_jwks_url: str = _opt(
        "https://www.googleapis.com/oauth2/v3/certs",
        "--oidc-jwks-url",
        "EMBER_OIDC_JWKS_URL",
        "JWKS URL of the keys that sign ID tokens",
        group="server",
    )
    oidc_allowed_emails: tuple[str, ...] = _opt(
        (),
        "--oidc-allowed-emails",
        "EMBER_OIDC_ALLOWED_EMAILS",
        "only ID tokens of these (service-account) emails, comma-separated",
        _origins,
        "server",
        "any",
    )
    allow_model_paths: bool = _opt(
        False,
        "--allow-model-paths",
        "EMBER_ALLOW_MODEL_PATHS",
        "let requests name models by server path or URI (file://, http(s)://, s3://, gs://, "
        "hf://: fetched with the server's credentials), in /api/pull and /api/create too; off, "
        "requests name models in the store, and the models given on the command line",
        _bool,
        "server",
    )
    protect_metrics: bool = _opt(
        False,
        "--protect-metrics",
        "EMBER_PROTECT_METRICS",
        "require auth on /metrics too (/live and /health stay open)",
        _bool,
        "server",
    )
    max_body_size: int = _opt(
        8 * 2**20,
        "--max-body-size",
        "EMBER_MAX_BODY_SIZE",
        "largest request body accepted (bytes, or 512KiB, 8MiB); larger ones get 413",
        _byte_size,
        "server",
        "8MiB",
    )
    request_timeout: float | None = _opt(
        None,
        "--request-timeout",
        "EMBER_REQUEST_TIMEOUT",
        "seconds a request may run before it is stopped with an error (0 = no limit)",
        _seconds_or_off,
        "server",
        "no limit",
    )
    header_timeout: float = _opt(
        30.0,
        "--header-timeout",
        "EMBER_HEADER_TIMEOUT",
        "seconds a client gets to send a request's line and headers (counted from connecting, "
        "or from the first byte of a later request on the connection) before the server "
        "answers 408 and closes the connection",
        _positive_float,
        "server",
    )
    drain_timeout: float = _opt(
        8.0,
        "--drain-timeout",
        "EMBER_DRAIN_TIMEOUT",
        "seconds in-flight requests get to finish after SIGTERM/SIGINT before they are ended",
        _positive_float,
        "server",
    )
    log_level: str = _opt(
        "info",
        "--log-level",
        "EMBER_LOG_LEVEL",
        "log level: " + ", ".join(LOG_LEVELS),
        _choice(*LOG_LEVELS),
        "server",
    )

    @classmethod
    def from_sources(
        cls,
        flags: Mapping[str, str | list[str] | None] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ServeConfig:
        """Build from raw flag values (field name -> string or None) and the environment.

        Raises ConfigError naming the flag or variable whose value is bad.
        """
        flags = flags or {}
        environ = {} if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in ("host", "port"):
                continue
            found = _lookup(f.name, f.metadata, flags, environ, f.metadata["env"])
            if found is not None:
                values[f.name] = found
        values.update(_host_and_port(flags, environ))
        return cls(**values)

    def model_store(self) -> ModelStore:
        """The model store these settings name (home, and models_dir if set)."""
        from ember.registry import ModelStore

        return ModelStore(self.home, self.models_dir)

    def engine_args(self, model_dir: str, served_model_name: str) -> EngineArgs:
        from ember.engine.args import EngineArgs

        return EngineArgs(
            model=model_dir,
            served_model_name=served_model_name,
            dtype=self.dtype,
            device=self.device,
            max_model_len=self.context_length,
            max_num_seqs=self.num_parallel,
            max_num_batched_tokens=self.max_num_batched_tokens,
            block_size=self.block_size,
            kv_cache_memory_gb=self.kv_cache_memory_gb,
            kv_cache_dtype=self.kv_cache_dtype,
            gpu_memory_utilization=self.gpu_memory_utilization,
            load_format=self.load_format,
            enforce_eager=self.enforce_eager,
            capture_all_graphs=self.capture_all_graphs,
            async_scheduling=self.async_scheduling,
            cache_weights=self.cache_weights,
        )


def _lookup(
    name: str,
    meta: Mapping[str, Any],
    flags: Mapping[str, str | list[str] | None],
    environ: Mapping[str, str],
    env_names: tuple[str, ...],
) -> Any:
    """The parsed value from the first source that sets it, or None if none does."""
    parse: Callable[[str], Any] = meta["parse"]
    raw = flags.get(name)
    if isinstance(raw, list):  # a repeat flag given several times
        raw = ",".join(raw)
    if raw is not None:
        return _parse(parse, raw, meta["flags"][0])
    for var in env_names:
        raw = environ.get(var)
        if raw is not None and raw.strip():
            return _parse(parse, raw, var)
    return None


def _parse(parse: Callable[[str], Any], raw: str, source: str) -> Any:
    try:
        return parse(raw)
    except ValueError as e:
        raise ConfigError(f"invalid value {raw!r} for {source}: {e}") from None


def _host_and_port(
    flags: Mapping[str, str | list[str] | None], environ: Mapping[str, str]
) -> dict[str, Any]:
    meta = {f.name: f.metadata for f in fields(ServeConfig)}
    host = _lookup("host", meta["host"], flags, environ, ("EMBER_HOST",))
    port = _lookup("port", meta["port"], flags, environ, ("EMBER_PORT", "PORT"))
    ollama_host = environ.get("OLLAMA_HOST", "").strip()
    if ollama_host:
        o_host, o_port = _parse(parse_ollama_host, ollama_host, "OLLAMA_HOST")
        host = o_host if host is None else host
        port = o_port if port is None else port
    if host is None and environ.get("PORT", "").strip():
        host = "0.0.0.0"  # Cloud Run sets $PORT and expects the server on every interface
    out: dict[str, Any] = {}
    if host is not None:
        out["host"] = host
    if port is not None:
        out["port"] = port
    return out


def add_config_arguments(parser: argparse.ArgumentParser, groups: tuple[str, ...]) -> None:
    """Add a flag for each ServeConfig field in `groups`; every flag defaults to None.

    The help of each names its environment variables and default, so `--help` is the reference.
    """
    for f in fields(ServeConfig):
        meta = f.metadata
        if meta["group"] not in groups:
            continue
        default = meta["shown"] or f.default
        env = ", ".join(meta["env"])
        help_text = f"{meta['help']} [env: {env}] (default: {default})"
        if meta["parse"] is _bool:
            parser.add_argument(
                *meta["flags"],
                dest=f.name,
                default=None,
                action="store_const",
                const="true",
                help=help_text,
            )
            parser.add_argument(
                *(f"--no-{flag[2:]}" for flag in meta["flags"] if flag.startswith("--")),
                dest=f.name,
                action="store_const",
                const="false",
                help=f"turn {meta['flags'][0]} off",
            )
            continue
        parser.add_argument(
            *meta["flags"],
            dest=f.name,
            default=None,
            action="append" if meta["repeat"] else "store",
            metavar=f.name.upper(),
            help=help_text,
        )


def config_flags(namespace: argparse.Namespace) -> dict[str, str | list[str] | None]:
    """The raw ServeConfig flag values found on a parsed namespace."""
    return {f.name: getattr(namespace, f.name, None) for f in fields(ServeConfig)}
