"""`ember build`: a container build context with the model's weights baked in.

Layer order is what makes re-deploys cheap: the weights are copied right after the base image,
so a change to ember's code or settings rebuilds (and re-pushes) only the small layers above them.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ember
from ember.deploy.spec import DeployError
from ember.kernel_cache import KERNEL_CACHE_SUBDIR

DEFAULT_BASE_IMAGE = "pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime"
CONTAINER_PORT = 8080  # Cloud Run's default $PORT; the platform may set another
IMAGE_HOME = "/var/lib/ember"
_SOURCE_FILES = ("pyproject.toml", "README.md")
_DOCKERIGNORE = """\
**/__pycache__
**/*.pyc
**/.git
**/.mypy_cache
**/.ruff_cache
**/.pytest_cache
"""


@dataclass(slots=True)
class BuildContext:
    directory: Path
    model_name: str
    model_path: str  # inside the image
    model_bytes: int
    entrypoint: list[str]
    env: dict[str, str] = field(default_factory=dict)


def image_model_name(model_dir: Path) -> str:
    """A folder name safe in a path and an image: lowercase letters, digits, '.', '_', '-'."""
    name = re.sub(r"[^a-z0-9._-]+", "-", model_dir.name.lower()).strip("-.")
    return name or "model"


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _source_root(wheel: Path | None) -> Path:
    """What `_copy_source` will copy: the wheel, or ember's source tree."""
    if wheel is not None:
        if not wheel.is_file():
            raise DeployError(f"wheel {wheel} not found; build one with 'pip wheel --no-deps .'")
        return wheel
    root = Path(ember.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise DeployError(
            "ember is installed without its source tree; pass --wheel PATH to a wheel built "
            "with 'pip wheel --no-deps .' from ember's repository"
        )
    return root


def _copy_source(dest: Path, wheel: Path | None) -> str:
    """Copy ember into the context; return the path pip installs from (context-relative)."""
    dest.mkdir()
    root = _source_root(wheel)
    if wheel is not None:
        shutil.copy2(wheel, dest / wheel.name)
        return f"ember-src/{wheel.name}"
    for name in _SOURCE_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(root / "ember", dest / "ember", ignore=ignore)
    return "ember-src"


def env_quote(value: str) -> str:
    """`value` as a Dockerfile double-quoted word that ENV reads back literally: `\\`, `"` and
    `$` (which ENV would substitute) are escaped with a backslash; anything else, non-ASCII
    included, stays as it is (JSON's \\uXXXX escapes mean nothing to Docker)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def dockerfile(
    ctx: BuildContext, base_image: str, install_from: str, warm: bool, kernels: bool = False
) -> str:
    lines = [
        f"FROM {base_image}",
        "# Weights first: their layer stays cached and pushed when ember or its settings change.",
        f"COPY model {ctx.model_path}",
    ]
    if warm:
        lines.append(f"COPY warm_prompts.txt {ctx.model_path}.warm_prompts.txt")
    lines += [
        "COPY ember-src /opt/ember-src",
        f"RUN pip install --no-cache-dir /opt/{install_from}",
        # Bytecode for every installed package, whatever the base image did: without it each
        # start compiles torch's ~2,100 modules again (3-4.5 s on an H200 host).
        'RUN python -c "import compileall, sysconfig; compileall.compile_dir('
        "sysconfig.get_paths()['purelib'], quiet=1, workers=0)\"",
    ]
    if warm:
        # The prompts' KV blocks, computed once here (on the CPU, in the serving dtype) and
        # loaded into the prefix cache by `ember serve` at start.
        # Made for the server's block size and KV cache dtype, or it would skip them.
        serving = [
            f" {flag} {shlex.quote(ctx.env[var])}"
            for var, flag in (
                ("EMBER_BLOCK_SIZE", "--block-size"),
                ("EMBER_KV_CACHE_DTYPE", "--kv-cache-dtype"),
            )
            if var in ctx.env
        ]
        lines.append(
            f"RUN ember warm {ctx.model_path} --prompts {ctx.model_path}.warm_prompts.txt "
            "--device cpu" + "".join(serving)
        )
    if kernels:
        # Compiled Triton kernels from a run on the target GPU type: without them the first
        # start on every new instance compiles for ~9 s (H200) before it is ready.
        lines.append(f"COPY kernel-cache {IMAGE_HOME}/{KERNEL_CACHE_SUBDIR}")
    lines += [f"ENV {k}={env_quote(v)}" for k, v in ctx.env.items()]
    lines += [
        f"EXPOSE {CONTAINER_PORT}",
        # Exec form: ember is PID 1 and gets SIGTERM itself, so it can drain.
        f"ENTRYPOINT {json.dumps(ctx.entrypoint[:1])}",
        f"CMD {json.dumps(ctx.entrypoint[1:])}",
    ]
    return "\n".join(lines) + "\n"


def write_context(
    model_dir: Path,
    out: Path,
    base_image: str = DEFAULT_BASE_IMAGE,
    settings: Sequence[tuple[str, str]] = (),
    warm_prompts: Path | None = None,
    wheel: Path | None = None,
    name: str | None = None,
    kernel_cache: Path | None = None,
) -> BuildContext:
    """Write the build context into `out`. Every input is checked before anything is written;
    a write that fails part-way leaves `out` as it was (removed, if this call created it)."""
    _check_inputs(model_dir, out, settings, warm_prompts, wheel, kernel_cache)
    name = image_model_name(Path(name) if name else model_dir)
    model_path = f"/models/{name}"
    env = {"PORT": str(CONTAINER_PORT), "EMBER_HOME": IMAGE_HOME}
    env |= {"EMBER_SERVED_MODEL_NAME": name} | dict(settings)
    ctx = BuildContext(
        directory=out,
        model_name=name,
        model_path=model_path,
        model_bytes=_dir_bytes(model_dir),
        entrypoint=["ember", "serve", model_path, "--host", "0.0.0.0"],
        env=env,
    )
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        _write_files(ctx, model_dir, base_image, warm_prompts, wheel, kernel_cache)
    except BaseException:
        _undo(out, created)
        raise
    return ctx


def _check_inputs(
    model_dir: Path,
    out: Path,
    settings: Sequence[tuple[str, str]],
    warm_prompts: Path | None,
    wheel: Path | None,
    kernel_cache: Path | None,
) -> None:
    if not (model_dir / "config.json").is_file():
        raise DeployError(f"{model_dir} is not a model directory (no config.json)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DeployError(f"{out} exists and is not an empty folder; pass -o to a new folder")
    if warm_prompts is not None and not warm_prompts.is_file():
        raise DeployError(
            f"warm prompts file {warm_prompts} not found; pass a JSON-lines file to --warm-prompts"
        )
    if kernel_cache is not None and not (kernel_cache.is_dir() and any(kernel_cache.iterdir())):
        raise DeployError(
            f"kernel cache {kernel_cache} is not a folder with compiled kernels; run "
            f"'ember serve' once on the target GPU type and pass its {KERNEL_CACHE_SUBDIR} "
            "folder (under ember's home, or $TRITON_CACHE_DIR if set)"
        )
    _source_root(wheel)
    for key, value in settings:
        if not key.startswith(("EMBER_", "OLLAMA_")):
            raise DeployError(f"setting {key!r} is not an EMBER_* or OLLAMA_* variable")
        if "\n" in value or "\r" in value:
            raise DeployError(f"setting {key!r} has a line break, which ENV cannot hold")


def _write_files(
    ctx: BuildContext,
    model_dir: Path,
    base_image: str,
    warm_prompts: Path | None,
    wheel: Path | None,
    kernel_cache: Path | None,
) -> None:
    out = ctx.directory
    shutil.copytree(model_dir, out / "model", ignore=shutil.ignore_patterns(".*"))
    if warm_prompts is not None:
        shutil.copy2(warm_prompts, out / "warm_prompts.txt")
    if kernel_cache is not None:
        shutil.copytree(kernel_cache, out / "kernel-cache")
    install_from = _copy_source(out / "ember-src", wheel)
    text = dockerfile(
        ctx, base_image, install_from, warm_prompts is not None, kernel_cache is not None
    )
    (out / "Dockerfile").write_text(text, encoding="utf-8")
    (out / ".dockerignore").write_text(_DOCKERIGNORE)


def _undo(out: Path, created: bool) -> None:
    """Take back a context written part-way: `out` was empty before, or did not exist."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
