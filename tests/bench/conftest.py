"""The real `ember serve` with the tiny model on loopback, started once for the bench tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.server.serverproc import COMMON_ARGS, Server, start


@pytest.fixture(scope="session")
def bench_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("bench-server")
    s = start(tmp, "bench", "tiny", *COMMON_ARGS, "--num-parallel", "4", "--max-queue", "64")
    yield s
    s.stop()
