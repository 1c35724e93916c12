"""Where the installed packages ship no bytecode, `ember serve` compiles them once into its home
(for its own process and the engine core's) instead of at every start; never beside the sources,
and not at all where bytecode exists or the user chose otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ember.bytecode_cache import has_bytecode, use_bytecode_cache

CHILD = """
def main(inbox, outbox):
    import fakepkg.in_child  # noqa: F401

    outbox.send("imported")
"""

SCRIPT = """
import sys
from pathlib import Path

from ember.bytecode_cache import use_bytecode_cache
from ember.engine.core_client import _spawn

print(use_bytecode_cache(Path(sys.argv[1]), probe="fakepkg"))
import fakepkg.in_parent  # noqa: F401
import fakepkg.child

core = _spawn(fakepkg.child.main)
print(core.from_core.recv())
core.process.join(30)
"""


def _package(root: Path) -> None:
    pkg = root / "fakepkg"
    pkg.mkdir()
    for name in ("__init__", "in_parent", "in_child"):
        (pkg / f"{name}.py").write_text("VALUE = 1\n")
    (pkg / "child.py").write_text(textwrap.dedent(CHILD))


def test_no_bytecode_is_compiled_once_into_the_home(tmp_path: Path) -> None:
    site, home = tmp_path / "site", tmp_path / "home"
    site.mkdir()
    _package(site)
    assert has_bytecode("fakepkg") is None  # not on this process's path
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.getcwd()}"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # as in many images
    for var in ("PYTHONPYCACHEPREFIX", "EMBER_BYTECODE_CACHE", "EMBER_BYTECODE_CACHE_DIR"):
        env.pop(var, None)
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(home)], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(home / "pycache"), "imported"]
    compiled = {p.name.split(".")[0] for p in (home / "pycache").rglob("*.pyc")}
    assert {"__init__", "in_parent", "child", "in_child"} <= compiled
    assert not list(site.rglob("*.pyc"))  # nothing beside the sources


def test_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert has_bytecode("torch") is True  # pip compiled it here
    assert use_bytecode_cache(tmp_path) is None
    assert use_bytecode_cache(tmp_path, probe="no_such_package") is None
    _package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # nothing may be written here
    assert has_bytecode("fakepkg") is False
    monkeypatch.setenv("EMBER_BYTECODE_CACHE", "0")
    assert use_bytecode_cache(tmp_path, probe="fakepkg") is None
    monkeypatch.delenv("EMBER_BYTECODE_CACHE")
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", str(tmp_path / "theirs"))
    assert use_bytecode_cache(tmp_path, probe="fakepkg") is None
    assert sys.pycache_prefix is None
