"""The real `ember serve` on loopback, started once per session, driven over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serverproc import COMMON_ARGS, Server, start


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("server")
    s = start(tmp, "main", "tiny", *COMMON_ARGS, "--num-parallel", "2", "--max-queue", "16")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def base_url(server: Server) -> str:
    return server.url
