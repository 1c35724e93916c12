"""`ember list | ps | show | rm | cp | create`: the store commands, printing what `ollama`
prints (NAME ID SIZE MODIFIED; NAME ID SIZE PROCESSOR UNTIL). Each returns the exit code and
reports errors as `Error: ...` on stderr, as ollama does."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ember.errors import EmberError
from ember.registry.store import ModelStore

if TYPE_CHECKING:
    from ember.registry.create import CreateSpec


def human_bytes(n: float) -> str:
    """Sizes as ollama prints them: decimal units, one decimal place below 10 (4.7 GB, 45 MB)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


def _span(seconds: float) -> str:
    for unit, size in (("year", 31536000), ("month", 2592000), ("week", 604800), ("day", 86400)):
        if seconds >= 2 * size:
            return f"{int(seconds // size)} {unit}s"
    for unit, size, about in (("hour", 3600, "an"), ("minute", 60, "a")):
        if seconds >= 2 * size:
            return f"{int(seconds // size)} {unit}s"
        if seconds >= size:
            return f"About {about} {unit}"
    return f"{int(seconds)} seconds" if seconds >= 1 else "Less than a second"


def time_ago(when: datetime, now: datetime | None = None) -> str:
    seconds = ((now or datetime.now(timezone.utc)) - when).total_seconds()
    return f"{_span(max(0.0, seconds))} ago"


def time_until(when: datetime, now: datetime | None = None) -> str:
    seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if when.year >= 2300:
        return "Forever"
    if seconds <= 0:
        return "Stopping..."
    return f"{_span(seconds)} from now"


def table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Left-aligned columns, three spaces apart (the header is rows[0])."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        out.write("    ".join(cells).rstrip() + "\n")


def _guard(run: Callable[[], int]) -> int:
    try:
        return run()
    except EmberError as e:
        print(f"Error: {e.message}", file=sys.stderr)
        return 1


def list_command(
    store: ModelStore, out: TextIO = sys.stdout, ollama_root: Path | None = None
) -> int:
    """ember's models, then those an Ollama install pulled (OLLAMA_MODELS or ~/.ollama/models),
    which ember serves too, marked with "(ollama)"."""

    def run() -> int:
        from ember.registry.ollama_store import list_ollama_models

        rows = [("NAME", "ID", "SIZE", "MODIFIED")]
        for m in store.list():
            rows.append((m.name, m.digest[:12], human_bytes(m.size), time_ago(m.modified_at)))
        for o in list_ollama_models(ollama_root):
            modified = datetime.fromtimestamp(o.manifest.stat().st_mtime, tz=timezone.utc)
            rows.append(
                (
                    f"{o.name} (ollama)",
                    o.digest.removeprefix("sha256:")[:12],
                    human_bytes(o.size),
                    time_ago(modified),
                )
            )
        table(rows, out)
        return 0

    return _guard(run)


def show_command(store: ModelStore, name: str, out: TextIO = sys.stdout) -> int:
    def run() -> int:
        model = store.resolve(name)
        d = model.details
        config = _json(model.path / "config.json")
        context = config.get("max_position_embeddings")
        rows = [
            ("architecture", d.family),
            ("parameters", d.parameter_size),
            ("context length", str(context) if context else "unknown"),
            ("quantization", d.quantization_level),
        ]
        if d.parent_model:
            rows.append(("from", d.parent_model))
        out.write("  Model\n")
        for key, value in rows:
            out.write(f"    {key:<20}{value}\n")
        params = store.params(model)
        if params:
            out.write("\n  Parameters\n")
            for key, value in params.items():
                for v in value if isinstance(value, list) else [value]:
                    out.write(f"    {key:<20}{json.dumps(v)}\n")
        system = store.system(model)
        if system:
            out.write("\n  System\n")
            for line in system.splitlines():
                out.write(f"    {line}\n")
        out.write(f"\n  Path\n    {model.path}\n")
        return 0

    return _guard(run)


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def rm_command(store: ModelStore, names: Sequence[str], out: TextIO = sys.stdout) -> int:
    def run() -> int:
        for name in names:
            store.remove(name)
            out.write(f"deleted '{name}'\n")
        return 0

    return _guard(run)


def cp_command(store: ModelStore, source: str, dest: str, out: TextIO = sys.stdout) -> int:
    def run() -> int:
        store.copy(source, dest)
        out.write(f"copied '{source}' to '{dest}'\n")
        return 0

    return _guard(run)


def create_command(
    store: ModelStore,
    name: str,
    modelfile: Path | None,
    base: str | None,
    out: TextIO = sys.stdout,
    check: Callable[[CreateSpec], None] | None = None,
) -> int:
    """`ember create NAME [-f Modelfile] [--from MODEL]`; a Modelfile's FROM names a folder
    relative to the Modelfile, as in Ollama. `check` rejects a spec before anything is
    written (the server's check of templates and parameters)."""
    from dataclasses import replace

    from ember.registry.create import CreateSpec, create
    from ember.registry.modelfile import parse_modelfile

    def run() -> int:
        spec = CreateSpec()
        if modelfile is not None:
            spec = parse_modelfile(modelfile.read_text(encoding="utf-8"))
            if spec.base and spec.base.startswith("."):
                spec = replace(spec, base=str((modelfile.parent / spec.base).resolve()))
        if base is not None:
            spec = replace(spec, base=base)
        if not spec.base:
            raise EmberError("nothing to create from: give --from MODEL or a Modelfile with FROM")
        if check is not None:
            check(spec)
        create(store, name, spec, lambda s: print(s, file=sys.stderr))
        out.write("success\n")
        return 0

    return _guard(run)


def ps_command(url: str, out: TextIO = sys.stdout) -> int:
    """Ask the running server (`ember serve`) which models it has loaded."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/ps", timeout=10) as r:
            models = json.loads(r.read())["models"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
        print(
            f"Error: could not reach ember at {url} ({e}); is 'ember serve' running?",
            file=sys.stderr,
        )
        return 1
    rows = [("NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL")]
    for m in models:
        until = datetime.fromisoformat(m["expires_at"].replace("Z", "+00:00"))
        processor = "100% GPU" if m.get("size_vram") else "100% CPU"
        rows.append(
            (
                m["name"],
                m["digest"][:12],
                human_bytes(m["size"]),
                processor,
                str(m.get("context_length", "")),
                time_until(until),
            )
        )
    table(rows, out)
    return 0
