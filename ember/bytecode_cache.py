"""Compiled Python bytecode for the server's and the engine's imports, where the installation
ships none.

Images built with PYTHONDONTWRITEBYTECODE=1 (a common Dockerfile line), or packages installed
with `pip --no-compile`, have no .pyc files, and then every start compiles each module it
imports from source: torch alone is ~2,100 modules, and on the GPU host whose torch ships
without them `import torch` took 3-4.5 s of every start. When torch's package has no bytecode,
`ember serve` points Python's bytecode cache (sys.pycache_prefix) into ember's home, for this
process and the engine core's, and lets both write there: the first start compiles and keeps
the result, later ones read it. Nothing is written next to the installed sources.

Off with EMBER_BYTECODE_CACHE=0; a PYTHONPYCACHEPREFIX set by the user is left alone.
`ember build` compiles the image's packages at build time instead (deploy/build.py).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from ember.envflags import env_flag

BYTECODE_CACHE_SUBDIR = "pycache"
_OURS = "EMBER_BYTECODE_CACHE_DIR"  # set when ember chose the prefix: its processes may write


def has_bytecode(package: str) -> bool | None:
    """Whether `package` (found, not imported) has compiled bytecode next to its __init__;
    None where it is not installed or is not a source package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    origin = Path(spec.origin)
    tag = sys.implementation.cache_tag
    return (origin.parent / "__pycache__" / f"{origin.stem}.{tag}.pyc").is_file()


def use_bytecode_cache(home: Path, probe: str = "torch") -> Path | None:
    """Point the bytecode cache at home/pycache when `probe` ships without bytecode (call it
    before the heavy imports, and before the engine core's process is spawned: it inherits
    the setting). Returns the folder, or None where nothing was changed."""
    if not env_flag("EMBER_BYTECODE_CACHE", True):
        return None
    if os.environ.get("PYTHONPYCACHEPREFIX") or sys.pycache_prefix:
        return None  # the user's choice
    if has_bytecode(probe) is not False:
        return None
    path = home / BYTECODE_CACHE_SUBDIR
    os.environ["PYTHONPYCACHEPREFIX"] = os.environ[_OURS] = str(path)
    sys.pycache_prefix = str(path)
    sys.dont_write_bytecode = False  # writes go to `path` only, never beside the sources
    return path


def enter_child() -> None:
    """In a process spawned by one that called use_bytecode_cache: write bytecode too
    (multiprocessing passes -B on to children when the parent started with it)."""
    ours = os.environ.get(_OURS)
    if ours and sys.pycache_prefix == ours:
        sys.dont_write_bytecode = False
