"""ember's middleware under uvicorn on loopback: an unexpected exception in a route is a JSON 500
in the route's API family's format, and the client's keep-alive connection survives it
(Starlette's own 500 handler re-raises, and uvicorn then drops the connection under the client's
next request); a body that stalls part-way is a 408 and its connection is closed."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from ember.server.errors import CatchUnexpected, install_error_handlers
from ember.server.limits import BodyLimit

BODY_TIMEOUT_S = 0.5


def make_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(CatchUnexpected)  # type: ignore[arg-type]
    app.add_middleware(BodyLimit, max_bytes=1024, read_timeout_s=BODY_TIMEOUT_S)  # type: ignore[arg-type]
    install_error_handlers(app)

    @app.get("/api/boom")
    async def boom() -> None:
        raise RuntimeError("kaput")

    @app.get("/v1/boom")
    async def boom_v1() -> None:
        raise KeyError("gone")

    @app.get("/ok")
    async def ok() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/echo")
    async def echo(body: dict[str, str]) -> dict[str, str]:
        return body

    return app


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(make_app(), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_a_500_keeps_the_connection(url: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(3):
            r = client.get("/api/boom")
            assert r.status_code == 500 and r.json() == {"error": "internal error: kaput"}
            assert r.headers.get("connection") != "close"
            assert client.get("/ok").json() == {"status": "ok"}  # the same pooled connection
        r = client.get("/v1/boom")
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "InternalServerError"
        assert client.get("/ok").status_code == 200


def test_a_body_that_stalls_is_408_and_closed(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = "POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        sock.sendall(head.encode() + b'{"a": "')
        t0 = time.monotonic()
        reply = b""
        while chunk := sock.recv(4096):  # the server closes the connection after its answer
            reply += chunk
        took = time.monotonic() - t0
    assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
    assert b"did not arrive within 0.5s" in reply
    assert BODY_TIMEOUT_S <= took < BODY_TIMEOUT_S + 5
    r = httpx.post(url + "/api/echo", json={"a": "b"}, timeout=10)
    assert r.json() == {"a": "b"}


def test_an_upload_that_stalls_is_a_408() -> None:
    """Blob uploads skip the body limit (they may be large) but not a stall: each chunk is due
    within the timeout of the last."""
    import asyncio
    from collections.abc import AsyncIterator

    from ember.errors import RequestStalledError
    from ember.server.limits import without_stalls

    async def chunks(stall: bool) -> AsyncIterator[bytes]:
        yield b"a"
        if stall:
            await asyncio.sleep(10)
        yield b"b"

    async def read(stall: bool) -> bytes:
        return b"".join([c async for c in without_stalls(chunks(stall), 0.1)])

    assert asyncio.run(read(False)) == b"ab"
    with pytest.raises(RequestStalledError) as e:
        asyncio.run(read(True))
    assert e.value.status_code == 408
