"""Shared fixtures: a private EMBER_HOME and tiny random-weight models of each architecture."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Every test run gets its own model store, so no test touches ~/.ember.
_HOME = Path(tempfile.mkdtemp(prefix="ember-test-home-"))
os.environ.setdefault("EMBER_HOME", str(_HOME))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ember_home() -> Path:
    return Path(os.environ["EMBER_HOME"])
