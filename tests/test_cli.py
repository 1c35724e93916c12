"""The `ember` command and its configuration: flags, then EMBER_*, then OLLAMA_*, then defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ember import __version__
from ember.config import ConfigError, ServeConfig, config_flags, parse_duration, parse_ollama_host

REPO = Path(__file__).resolve().parents[1]


def ember(
    *args: str, stdin: str | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "EMBER_PORT"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # No stdin given: /dev/null, never the test runner's (`ember run` reads piped input whole).
    feed: dict[str, Any] = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run(
        [sys.executable, "-m", "ember.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        **feed,
    )


def ember_on_a_terminal(*args: str, typed: str, timeout: float = 120) -> tuple[int, str, str]:
    """`ember ARGS` with a terminal as its stdin, on which `typed` is typed (b"\\x04" is the
    end of input): (exit code, stdout, stderr)."""
    import pty
    import termios

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "EMBER_PORT"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    master, slave = pty.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[3] &= ~termios.ECHO  # nobody reads the echo back
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ember.cli", *args],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        os.write(master, typed.encode())
        out, err = proc.communicate(timeout=timeout)
    finally:
        os.close(slave)
        os.close(master)
    return proc.returncode, out, err


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


def test_run_chat_loop_reads_the_terminal_until_bye(ember_home: Path) -> None:
    code, out, err = ember_on_a_terminal(
        "run", "tiny", "--num-predict", "4", "--device", "cpu",
        typed="hi\n\nhow are you\n/bye\nnot read\n",
    )  # fmt: skip
    assert code == 0, err
    assert out.count(">>> ") == 4  # hi, the blank line, how are you, /bye


def test_run_chat_loop_keeps_the_conversation(ember_home: Path) -> None:
    # Each turn resends the whole conversation, so a small context fills up after a few turns;
    # the loop reports it and carries on.
    code, _, err = ember_on_a_terminal(
        "run", "tiny", "--num-predict", "8", "--context-length", "80", "--device", "cpu",
        typed="tell me more\n" * 12 + "\x04",
    )  # fmt: skip
    assert code == 0, err
    assert "context length is 80 tokens" in err


def test_run_chat_loop_ends_at_eof(ember_home: Path) -> None:
    code, out, err = ember_on_a_terminal(
        "run", "tiny", "--num-predict", "2", "--device", "cpu", typed="one turn\n\x04"
    )
    assert code == 0, err
    assert out.count(">>> ") == 2


def test_piped_input_is_one_prompt_before_the_prompts_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    from ember.cli_run import prompt_and_mode

    monkeypatch.setattr(sys, "stdin", io.StringIO("line one\nline two\n"))
    assert prompt_and_mode([]) == ("line one\nline two\n", False)
    monkeypatch.setattr(sys, "stdin", io.StringIO("def f(): pass\n"))
    assert prompt_and_mode(["explain", "this"]) == ("def f(): pass\n explain this", False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert prompt_and_mode([]) == ("", False)  # nothing to answer: no chat either


def test_run_reads_piped_input_whole(ember_home: Path) -> None:
    r = ember("run", "tiny", "--num-predict", "2", "--device", "cpu", stdin="a\nb\n/bye\n")
    assert r.returncode == 0, r.stderr
    assert ">>>" not in r.stdout and r.stdout.endswith("\n")


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


# --- user errors: one `Error: ...` line, never a traceback ------------------------------------


def test_create_with_a_missing_modelfile_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ember.cli import main

    assert main(["create", "x", "-f", str(tmp_path / "nofile"), "--home", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: cannot read Modelfile") and "No such file" in err
    assert len(err.splitlines()) == 1


def test_create_reads_the_modelfile_in_the_current_folder(tmp_path: Path) -> None:
    from ember.registry import ModelStore

    home = str(tmp_path / "home")
    r = ember("create", "nofrom", "--home", home, cwd=tmp_path)
    assert r.returncode == 1 and "./Modelfile" in r.stderr
    (tmp_path / "Modelfile").write_text('FROM tiny\nSYSTEM "You are Mario."\n')
    r = ember("create", "mario", "--home", home, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "success\n", r.stderr
    store = ModelStore(Path(home))
    assert store.system(store.resolve("mario")) == "You are Mario."


def test_warm_with_a_missing_prompts_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ember.cli import main

    assert main(["warm", str(tmp_path), "--prompts", str(tmp_path / "none.jsonl")]) == 1
    assert capsys.readouterr().err == f"Error: prompts file '{tmp_path / 'none.jsonl'}' not found\n"


def test_run_with_a_bad_stored_parameter_is_one_line(ember_home: Path, tmp_path: Path) -> None:
    import shutil

    from ember.registry import ModelStore

    model = tmp_path / "typo"
    shutil.copytree(ModelStore(ember_home).resolve("tiny").path, model)
    (model / "params.json").write_text('{"num_predict": "abc"}')
    r = ember("run", str(model), "hi", "--device", "cpu")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("Error: the model's stored parameters are invalid")
    assert "num_predict" in r.stderr and "params.json" in r.stderr


def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ember.cli", "show", "tiny", "--home", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `head` does once it has its lines
    err = proc.stderr.read()
    assert proc.wait(timeout=60) != 0
    assert err == ""


def test_small_polish(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from datetime import datetime, timedelta, timezone

    from ember.registry.commands import time_ago

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert time_ago(now - timedelta(seconds=1.5), now) == "1 second ago"
    assert time_ago(now - timedelta(seconds=2), now) == "2 seconds ago"
    with pytest.raises(ConfigError, match=r"--request-timeout.*>= 0"):
        ServeConfig.from_sources({"request_timeout": "-1"}, {})
    assert ServeConfig.from_sources({"request_timeout": "0"}, {}).request_timeout is None


def test_run_of_an_embedding_model_says_where_embeddings_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from ember.cli import main

    minilm = tmp_path / "minilm"
    minilm.mkdir()
    (minilm / "config.json").write_text('{"architectures": ["BertModel"], "model_type": "bert"}')
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["run", str(minilm), "hi", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "is an embedding model" in err and "/api/embed" in err and "/v1/embeddings" in err


def test_show_prints_one_part_as_ollama_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ember.cli import main
    from ember.registry import ModelStore
    from ember.registry.create import CreateSpec, create
    from ember.registry.modelfile import parse_modelfile

    home = tmp_path / "home"
    spec = CreateSpec(
        base="tiny",
        template="{% for m in messages %}{{ m['content'] }}{% endfor %}",
        system="You are Mario.",
        parameters={"temperature": 0.3, "stop": ["<a>", "<b>"]},
    )
    store = ModelStore(home)
    params = store.params(create(store, "mario", spec))  # tiny's own, then the spec's

    def show(*flags: str) -> str:
        capsys.readouterr()
        assert main(["show", "mario", "--home", str(home), *flags]) == 0
        return capsys.readouterr().out

    assert show("--system") == "You are Mario.\n"
    assert show("--template") == f"{spec.template}\n"
    assert show("--parameters").split("\n")[-4:] == [
        f"{'temperature':<30} 0.3",
        f'{"stop":<30} "<a>"',
        f'{"stop":<30} "<b>"',
        "",
    ]
    back = parse_modelfile(show("--modelfile"))
    assert (back.template, back.system, back.parameters) == (spec.template, spec.system, params)
    assert "Model" in show() and "Path" in show()
    with pytest.raises(SystemExit) as info:
        main(["show", "mario", "--system", "--template"])
    assert info.value.code == 2
