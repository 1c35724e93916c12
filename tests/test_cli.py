"""The `ember` command and its configuration: flags, then EMBER_*, then OLLAMA_*, then defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ember import __version__
from ember.config import ConfigError, ServeConfig, config_flags, parse_duration, parse_ollama_host


def ember(
    *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "EMBER_PORT"))}
    return subprocess.run(
        [sys.executable, "-m", "ember.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_version() -> None:
    r = ember("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"ember {__version__}"


def test_help_is_fast_and_imports_no_torch() -> None:
    code = (
        "import sys; from ember.cli import main\n"
        "try:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'fastapi' not in sys.modules"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_serve_help_documents_every_option_and_its_env_vars() -> None:
    out = ember("serve", "--help").stdout
    for text in (
        "--num-parallel",
        "OLLAMA_NUM_PARALLEL",
        "OLLAMA_MAX_QUEUE",
        "OLLAMA_CONTEXT_LENGTH",
        "OLLAMA_KEEP_ALIVE",
        "OLLAMA_ORIGINS",
        "OLLAMA_HOST",
        "EMBER_HOME",
        "EMBER_DTYPE",
        "PORT",
        "--kv-cache-memory-gb",
        "--served-model-name",
        "--kv-cache-dtype",
        "--no-cache-weights",
        "EMBER_STARTUP_TRACE",
        "EMBER_PREFETCH_WEIGHTS",
        "EMBER_BYTECODE_CACHE",
        "EMBER_PREPIN",
        "EMBER_WARM_BESIDE_LOAD",
        "EMBER_PIN_REGISTER",
        "EMBER_GC_FREEZE",
    ):
        assert text in out, text


def test_bad_flag_value_names_the_flag() -> None:
    r = ember("serve", "--num-parallel", "zero")
    assert r.returncode == 2
    assert "--num-parallel" in r.stderr and "integer" in r.stderr


def test_run_prints_a_completion(ember_home: Path) -> None:
    r = ember("run", "tiny", "hello", "there", "--num-predict", "8", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


def test_run_chat_loop_reads_stdin_until_bye(ember_home: Path) -> None:
    r = ember(
        "run",
        "tiny",
        "--num-predict",
        "4",
        "--device",
        "cpu",
        stdin="hi\n\nhow are you\n/bye\nnot read\n",
    )
    assert r.returncode == 0, r.stderr
    replies = [line for line in r.stdout.split("\n") if line.strip()]
    assert 1 <= len(replies) <= 2  # two turns; a reply may be only whitespace


def test_run_chat_loop_keeps_the_conversation(ember_home: Path) -> None:
    # Each turn resends the whole conversation, so a small context fills up after a few turns;
    # the loop reports it and carries on.
    r = ember(
        "run", "tiny", "--num-predict", "8", "--context-length", "80", "--device", "cpu",
        stdin="tell me more\n" * 12,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "context length is 80 tokens" in r.stderr


def test_run_chat_loop_ends_at_eof(ember_home: Path) -> None:
    r = ember("run", "tiny", "--num-predict", "2", "--device", "cpu", stdin="one turn\n")
    assert r.returncode == 0, r.stderr


def test_run_unknown_model_fails_cleanly(ember_home: Path) -> None:
    r = ember("run", "missing-model", "hi")
    assert r.returncode == 1
    assert "model 'missing-model' not found" in r.stderr
    assert "Traceback" not in r.stderr


# --- ServeConfig -----------------------------------------------------------------------------


def test_defaults() -> None:
    c = ServeConfig.from_sources({}, {})
    assert (c.model, c.host, c.port, c.num_parallel, c.max_queue) == (
        "tiny",
        "127.0.0.1",
        11434,
        4,
        512,
    )
    assert c.home == Path("~/.ember").expanduser() and c.context_length is None
    assert c.keep_alive == 300.0 and c.origins == ()


def test_flags_beat_ember_env_beat_ollama_env() -> None:
    env = {"OLLAMA_NUM_PARALLEL": "3", "EMBER_NUM_PARALLEL": "5", "OLLAMA_MAX_QUEUE": "7"}
    assert ServeConfig.from_sources({}, env).num_parallel == 5
    assert ServeConfig.from_sources({}, env).max_queue == 7
    assert ServeConfig.from_sources({"num_parallel": "9"}, env).num_parallel == 9
    assert ServeConfig.from_sources({}, {"OLLAMA_NUM_PARALLEL": "3"}).num_parallel == 3


def test_ollama_env_vars() -> None:
    c = ServeConfig.from_sources(
        {},
        {
            "OLLAMA_CONTEXT_LENGTH": "4096",
            "OLLAMA_KEEP_ALIVE": "1h30m",
            "OLLAMA_ORIGINS": "https://a.example, https://*.b.example",
            "EMBER_HOME": "/tmp/x",
        },
    )
    assert c.context_length == 4096 and c.keep_alive == 5400.0
    assert c.origins == ("https://a.example", "https://*.b.example")
    assert c.home == Path("/tmp/x")
    engine = c.engine_args("/models/tiny", "tiny:latest")
    assert engine.max_model_len == 4096 and engine.max_num_seqs == 4


@pytest.mark.parametrize(
    ("field", "variable", "default"),
    [
        ("async_scheduling", "EMBER_ASYNC_SCHEDULING", None),  # None: on for CUDA only
        ("capture_all_graphs", "EMBER_CAPTURE_ALL_GRAPHS", False),
        ("cache_weights", "EMBER_CACHE_WEIGHTS", True),
    ],
)
def test_engine_switches_reach_the_engine(field: str, variable: str, default: bool | None) -> None:
    assert getattr(ServeConfig.from_sources({}, {}).engine_args("/m", "m"), field) is default
    for raw, value in (("true", True), ("false", False)):
        flag = ServeConfig.from_sources({field: raw}, {})
        env = ServeConfig.from_sources({}, {variable: raw})
        assert getattr(flag.engine_args("/m", "m"), field) is value
        assert getattr(env.engine_args("/m", "m"), field) is value


def test_every_switch_has_a_no_form_on_the_command_line() -> None:
    from ember.cli import build_parser

    parser = build_parser()
    on = config_flags(parser.parse_args(["serve", "--capture-all-graphs"]))
    off = config_flags(parser.parse_args(["serve", "--no-async-scheduling"]))
    assert on["capture_all_graphs"] == "true" and on["async_scheduling"] is None
    assert off["async_scheduling"] == "false"
    config = ServeConfig.from_sources(off, {"EMBER_ASYNC_SCHEDULING": "true"})
    assert not config.engine_args("/m", "m").async_scheduling  # the flag beats the variable


@pytest.mark.parametrize(
    ("env", "host", "port"),
    [
        ({"OLLAMA_HOST": "0.0.0.0"}, "0.0.0.0", 11434),
        ({"OLLAMA_HOST": "0.0.0.0:8080"}, "0.0.0.0", 8080),
        ({"OLLAMA_HOST": "http://example.com:9000"}, "example.com", 9000),
        ({"OLLAMA_HOST": "https://example.com"}, "example.com", 443),
        ({"OLLAMA_HOST": ":7000"}, "127.0.0.1", 7000),
        ({"PORT": "8080"}, "0.0.0.0", 8080),
        ({"PORT": "8080", "OLLAMA_HOST": "10.0.0.1"}, "10.0.0.1", 8080),
        ({"EMBER_HOST": "::1", "OLLAMA_HOST": "1.2.3.4:5"}, "::1", 5),
    ],
)
def test_host_and_port(env: dict[str, str], host: str, port: int) -> None:
    c = ServeConfig.from_sources({}, env)
    assert (c.host, c.port) == (host, port)


def test_port_flag_beats_env() -> None:
    c = ServeConfig.from_sources({"port": "1234"}, {"PORT": "8080"})
    assert (c.host, c.port) == ("0.0.0.0", 1234)


@pytest.mark.parametrize(
    ("flags", "env", "source"),
    [
        ({}, {"OLLAMA_NUM_PARALLEL": "0"}, "OLLAMA_NUM_PARALLEL"),
        ({}, {"OLLAMA_MAX_QUEUE": "-1"}, "OLLAMA_MAX_QUEUE"),
        ({}, {"OLLAMA_HOST": "host:notaport"}, "OLLAMA_HOST"),
        ({}, {"PORT": "99999"}, "PORT"),
        ({}, {"OLLAMA_KEEP_ALIVE": "soon"}, "OLLAMA_KEEP_ALIVE"),
        ({"dtype": "int3"}, {}, "--dtype"),
        ({"device": "tpu"}, {}, "--device"),
        ({"kv_cache_memory_gb": "-2"}, {}, "--kv-cache-memory-gb"),
        ({"log_level": "loud"}, {}, "--log-level"),
    ],
)
def test_bad_values_name_their_source(
    flags: dict[str, str], env: dict[str, str], source: str
) -> None:
    with pytest.raises(ConfigError, match=source):
        ServeConfig.from_sources(flags, env)


def test_parsers() -> None:
    assert parse_duration("5m") == 300.0
    assert parse_duration("300") == 300.0
    assert parse_duration("-1") == -1.0
    assert parse_duration("-5m") == -1.0
    assert parse_duration("1.5h") == 5400.0
    assert parse_ollama_host("[::1]:8000") == ("::1", 8000)
    assert parse_ollama_host("http://localhost") == ("localhost", 80)


def test_store_commands_print_ollamas_tables(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    r = ember("show", "tiny", "--home", home)  # creates tiny
    assert r.returncode == 0 and "architecture        llama" in r.stdout
    assert ember("cp", "tiny", "mine:v1", "--home", home).stdout == "copied 'tiny' to 'mine:v1'\n"
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text('FROM mine:v1\nSYSTEM "You are Mario."\nPARAMETER temperature 0.3\n')
    r = ember("create", "mario", "-f", str(modelfile), "--home", home)
    assert r.returncode == 0 and r.stdout == "success\n", r.stderr
    show = ember("show", "mario", "--home", home).stdout
    assert "You are Mario." in show and "temperature         0.3" in show
    lines = ember("ls", "--home", home).stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"tiny:latest", "mine:v1", "mario:latest"}
    assert rows["tiny:latest"][1] == rows["mine:v1"][1] != rows["mario:latest"][1]
    assert rows["tiny:latest"][2:4] == ["934", "KB"] and " ".join(rows["mine:v1"][4:]).endswith(
        "ago"
    )
    assert ember("rm", "mine:v1", "--home", home).stdout == "deleted 'mine:v1'\n"
    r = ember("rm", "mine:v1", "--home", home)
    assert r.returncode == 1 and r.stderr.startswith("Error: model 'mine:v1' not found")


def test_ps_without_a_server_says_so() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "ember.cli", "ps"],
        capture_output=True,
        text=True,
        env={**os.environ, "OLLAMA_HOST": "127.0.0.1:9"},
        timeout=60,
    )
    assert r.returncode == 1 and "is 'ember serve' running?" in r.stderr


def test_human_formats() -> None:
    from datetime import datetime, timedelta, timezone

    from ember.registry.commands import human_bytes, time_ago, time_until

    assert [human_bytes(n) for n in (4.7e9, 45e6, 934_000, 12)] == [
        "4.7 GB",
        "45 MB",
        "934 KB",
        "12 B",
    ]
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert time_ago(now - timedelta(days=15), now) == "2 weeks ago"
    assert time_ago(now - timedelta(seconds=70), now) == "About a minute ago"
    assert time_until(now + timedelta(minutes=4, seconds=59), now) == "4 minutes from now"
    assert time_until(datetime(2318, 11, 30, tzinfo=timezone.utc), now) == "Forever"
