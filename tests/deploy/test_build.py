"""`ember build`: the context's contents and layer order, and its entrypoint really serving."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest

from ember.deploy.build import write_context
from ember.deploy.spec import DeployError
from tests.server.serverproc import free_port


def env_word(word: str) -> str:
    """A Dockerfile ENV value as Docker reads it: inside double quotes a backslash escapes `"`,
    `$` and itself (and is kept before anything else); an unescaped `$` is a variable."""
    assert word[0] == word[-1] == '"', word
    out, chars = [], iter(word[1:-1])
    for c in chars:
        if c == "\\":
            nxt = next(chars)
            out.append(nxt if nxt in '"$\\' else c + nxt)
        else:
            assert c not in '"$', f"unescaped {c!r} in {word}"
            out.append(c)
    return "".join(out)


def env_of(steps: list[tuple[str, str]]) -> dict[str, str]:
    return {
        k: env_word(v) for k, _, v in (rest.partition("=") for op, rest in steps if op == "ENV")
    }


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    out = []
    for line in dockerfile.splitlines():
        if line.strip() and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op, rest))
    return out


def test_context_contents_and_layer_order(tiny_dir: Path, tmp_path: Path) -> None:
    warm = tmp_path / "warm.txt"
    warm.write_text(
        '{"messages": [{"role": "system", "content": "You are a helpful assistant."}]}\n'
    )
    ctx = write_context(
        tiny_dir, tmp_path / "ctx", settings=[("EMBER_NUM_PARALLEL", "8")], warm_prompts=warm
    )
    root = ctx.directory
    assert ctx.model_name == "tiny-llama" and ctx.model_path == "/models/tiny-llama"
    assert sorted(p.name for p in (root / "model").iterdir()) == sorted(
        p.name for p in tiny_dir.iterdir()
    )
    assert (root / "ember-src" / "pyproject.toml").is_file()
    assert (root / "ember-src" / "ember" / "cli.py").is_file()
    assert not list((root / "ember-src").rglob("__pycache__"))
    assert "__pycache__" in (root / ".dockerignore").read_text()
    assert (root / "warm_prompts.txt").read_text() == warm.read_text()

    steps = instructions((root / "Dockerfile").read_text())
    ops = [op for op, _ in steps]
    assert steps[0][0] == "FROM" and "cuda" in steps[0][1] and "runtime" in steps[0][1]
    assert steps[1] == ("COPY", "model /models/tiny-llama")  # weights: the first layer
    code = ops.index("RUN")
    assert ops.index("COPY", 2) < code and all(op in ("ENV", "EXPOSE", "ENTRYPOINT", "CMD")
                                               for op in ops[code + 3 :])  # fmt: skip
    assert "pip install" in steps[code][1]
    assert "compileall" in steps[code + 1][1]
    assert steps[code + 2] == (
        "RUN",
        "ember warm /models/tiny-llama --prompts /models/tiny-llama.warm_prompts.txt --device cpu",
    )
    env = env_of(steps)
    assert env["EMBER_NUM_PARALLEL"] == "8" and env["PORT"] == "8080"


def test_image_packages_get_bytecode(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build's compile step, as the image's shell would run it, compiles site-packages."""
    ctx = write_context(tiny_dir, tmp_path / "ctx")
    steps = instructions((ctx.directory / "Dockerfile").read_text())
    run = next(rest for op, rest in steps if op == "RUN" and "compileall" in rest)
    python, flag, code = shlex.split(run)
    assert (python, flag) == ("python", "-c")
    site = tmp_path / "site-packages"
    (site / "pkg").mkdir(parents=True)
    (site / "pkg" / "mod.py").write_text("X = 1\n")
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"purelib": str(site)})
    exec(code, {})
    assert [p.name.split(".")[0] for p in site.rglob("*.pyc")] == ["mod"]


def test_rejects_what_cannot_work(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DeployError, match=r"config\.json"):
        write_context(tmp_path, tmp_path / "a")
    with pytest.raises(DeployError, match="EMBER_"):
        write_context(tiny_dir, tmp_path / "b", settings=[("HOME", "/x")])


def test_env_values_reach_the_image_literally(tiny_dir: Path, tmp_path: Path) -> None:
    values = {
        "EMBER_API_KEY": "ab$cd${HOME}",
        "EMBER_ORIGINS": "https://été.example,日本",
        "EMBER_X": 'say "hi" \\n C:\\dir\\',
    }
    ctx = write_context(tiny_dir, tmp_path / "ctx", settings=list(values.items()))
    text = (ctx.directory / "Dockerfile").read_text(encoding="utf-8")
    assert "\\u" not in text
    env = env_of(instructions(text))
    assert {k: env[k] for k in values} == values
    with pytest.raises(DeployError, match="line break"):
        write_context(tiny_dir, tmp_path / "ctx2", settings=[("EMBER_X", "a\nb")])


def test_bad_inputs_write_nothing(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ctx"
    with pytest.raises(DeployError, match="wheel"):
        write_context(tiny_dir, out, wheel=tmp_path / "missing.whl")
    with pytest.raises(DeployError, match="warm prompts"):
        write_context(tiny_dir, out, warm_prompts=tmp_path / "missing.jsonl")
    assert not out.exists()
    ctx = write_context(tiny_dir, out)  # the corrected command, with the same -o
    assert (ctx.directory / "Dockerfile").is_file()


def test_a_write_that_fails_part_way_leaves_no_context(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ember.deploy.build as build

    def full_disk(dest: Path, wheel: Path | None) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build, "_copy_source", full_disk)
    with pytest.raises(OSError):
        write_context(tiny_dir, tmp_path / "new" / "ctx")
    assert not (tmp_path / "new" / "ctx").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError):
        write_context(tiny_dir, tmp_path / "empty")
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())


def test_warm_blocks_are_made_for_the_servers_cache(tiny_dir: Path, tmp_path: Path) -> None:
    """The image's `ember warm` step uses the server's block size and KV cache dtype (from the
    settings), or the server would skip the blocks it made."""
    warm = tmp_path / "warm.txt"
    warm.write_text('{"prompt": "You are a helpful assistant."}\n')
    settings = [("EMBER_KV_CACHE_DTYPE", "fp8"), ("EMBER_BLOCK_SIZE", "32")]
    ctx = write_context(tiny_dir, tmp_path / "ctx", settings=settings, warm_prompts=warm)
    steps = instructions((ctx.directory / "Dockerfile").read_text())
    run = next(rest for op, rest in steps if op == "RUN" and rest.startswith("ember warm"))
    from ember.cli import build_parser

    args = build_parser().parse_args(shlex.split(run)[1:])
    assert (args.kv_cache_dtype, args.block_size, args.device) == ("fp8", 32, "cpu")


def test_kernel_cache_is_baked_where_serve_looks(tiny_dir: Path, tmp_path: Path) -> None:
    """`--kernel-cache`: compiled kernels land in the image under EMBER_HOME/kernels/triton,
    the folder `ember serve` points Triton's cache at."""
    cache = tmp_path / "triton"
    (cache / "abc123").mkdir(parents=True)
    (cache / "abc123" / "kernel.cubin").write_bytes(b"\x7fELF")
    ctx = write_context(tiny_dir, tmp_path / "ctx", kernel_cache=cache)
    root = ctx.directory
    assert (root / "kernel-cache" / "abc123" / "kernel.cubin").read_bytes() == b"\x7fELF"
    steps = instructions((root / "Dockerfile").read_text())
    env = env_of(steps)
    assert ("COPY", f"kernel-cache {env['EMBER_HOME']}/kernels/triton") in steps
    with pytest.raises(DeployError, match="ember serve"):
        write_context(tiny_dir, tmp_path / "ctx2", kernel_cache=tmp_path / "missing")


def test_entrypoint_serves_on_port(tiny_dir: Path, tmp_path: Path) -> None:
    """Run the image's ENTRYPOINT + CMD as written, with its ENV and a $PORT as Cloud Run sets
    it; the model path maps to the context's model folder, the host to loopback."""
    ctx = write_context(tiny_dir, tmp_path / "ctx")
    steps = instructions((ctx.directory / "Dockerfile").read_text())
    entry = json.loads(next(rest for op, rest in steps if op == "ENTRYPOINT"))
    cmd = entry + json.loads(next(rest for op, rest in steps if op == "CMD"))
    assert cmd[:3] == ["ember", "serve", ctx.model_path] and cmd[3:] == ["--host", "0.0.0.0"]
    cmd = [sys.executable, "-m", "ember.cli", *cmd[1:]]
    cmd[cmd.index(ctx.model_path)] = str(ctx.directory / "model")
    cmd[cmd.index("0.0.0.0")] = "127.0.0.1"
    env = env_of(steps)
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_HOST", "EMBER_PORT")}
    full_env |= env | {"PORT": str(port), "EMBER_HOME": str(tmp_path / "home")}
    full_env |= {"EMBER_DEVICE": "cpu", "EMBER_CONTEXT_LENGTH": "256"}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    try:
        import time

        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code
                if status == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert status == 200, (tmp_path / "serve.log").read_text()[-3000:]
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()
        assert models["data"][0]["id"].startswith(ctx.model_name)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
