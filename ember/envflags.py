"""Start-up levers read from the environment: on/off switches (EMBER_PREFETCH_WEIGHTS,
EMBER_BYTECODE_CACHE, EMBER_PREPIN, EMBER_WARM_BESIDE_LOAD, EMBER_GC_FREEZE, EMBER_STARTUP_TRACE,
EMBER_EARLY_READS, EMBER_LOAD_TAPER) and counts (EMBER_MAPPED_COPIERS, default a quarter of the
loader's threads). Torch-free."""

from __future__ import annotations

import os

_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def env_switch(name: str) -> bool | None:
    """`name`'s value as a switch; None when it is unset, empty or neither on nor off (for a
    setting whose default depends on the machine)."""
    value = os.environ.get(name, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    return None


def env_flag(name: str, default: bool) -> bool:
    """`name`'s value as a switch; `default` when it is unset, empty or neither on nor off."""
    switch = env_switch(name)
    return default if switch is None else switch


def env_count(name: str, default: int) -> int:
    """`name`'s value as a count of at least 0; `default` when it is unset or not a whole
    number."""
    value = os.environ.get(name, "").strip()
    try:
        return max(0, int(value))
    except ValueError:
        return default
