"""A copy of the built-in tiny model, for build contexts and a live server."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.registry.tiny import write_tiny


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "Tiny-Llama"
    path.mkdir()
    write_tiny(path)
    return path
