"""The HTTP client and the stream reader against a scripted server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from ember.bench.client import ConnectError, HttpClient
from ember.bench.dataset import Prompt
from ember.bench.request import send
from tests.server.serverproc import free_port

Handler = Callable[[int, int, asyncio.StreamWriter], Awaitable[bool]]


def _chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def _event(text: str, usage: int | None = None) -> bytes:
    extra = f',"usage":{{"prompt_tokens":3,"completion_tokens":{usage}}}' if usage else ""
    return f'data: {{"choices":[{{"index":0,"text":"{text}"}}]{extra}}}\n\n'.encode()


USAGE_EVENT = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n'


class ScriptedServer:
    """Reads requests off each connection and lets `handler(conn_no, req_no, writer)` answer;
    the handler returns False to close the connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.port = free_port()
        self._tasks: set[asyncio.Task[None]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = self.connections
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        req = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                keep = await self.handler(conn, req, writer)
                await writer.drain()
                req += 1
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


PROMPT = Prompt([1, 2, 3], 3, 4)


def test_stream_with_crlf_lines_split_across_chunks_and_reuse() -> None:
    async def handler(conn: int, req: int, w: asyncio.StreamWriter) -> bool:
        body = _event("a") + _event("") + _event("b").replace(b"\n", b"\r\n") + USAGE_EVENT
        body += b"data: [DONE]\n\n"
        w.write(SSE_HEAD + _chunked(body[:7], body[7:50], body[50:]))
        return True

    async def main() -> None:
        async with ScriptedServer(handler) as server:
            client = HttpClient(server.url)
            for _ in range(3):
                rec = await send(client, "/v1/completions", b"{}", PROMPT, chat=False)
                assert rec.success, rec.error
                assert len(rec.chunk_times) == 2  # the empty-text chunk is no content
                assert (rec.prompt_len, rec.output_tokens) == (3, 4)
                assert 0 < rec.ttft <= rec.latency
            assert server.connections == 1  # keep-alive: one connection for all three
            await client.aclose()

    asyncio.run(main())


def test_per_chunk_usage_is_kept() -> None:
    async def handler(conn: int, req: int, w: asyncio.StreamWriter) -> bool:
        body = _event("a", 2) + _event("b", 3) + _event("c", 4) + b"data: [DONE]\n\n"
        w.write(SSE_HEAD + _chunked(body))
        return True

    async def main() -> None:
        async with ScriptedServer(handler) as server:
            rec = await send(HttpClient(server.url), "/v1/completions", b"{}", PROMPT, chat=False)
            assert rec.chunk_usage == [2, 3, 4] and rec.output_tokens == 4

    asyncio.run(main())


def test_a_connection_closed_while_idle_is_replaced() -> None:
    async def handler(conn: int, req: int, w: asyncio.StreamWriter) -> bool:
        if req == 1:
            return False  # the server dropped the kept-alive connection: no answer at all
        w.write(SSE_HEAD + _chunked(_event("x") + USAGE_EVENT + b"data: [DONE]\n\n"))
        return True

    async def main() -> None:
        async with ScriptedServer(handler) as server:
            client = HttpClient(server.url)
            for _ in range(3):
                rec = await send(client, "/v1/completions", b"{}", PROMPT, chat=False)
                assert rec.success, rec.error
            assert server.connections == 3  # each kept-alive connection is dropped after one use

    asyncio.run(main())


def test_http_errors_and_stream_errors_are_failures() -> None:
    async def handler(conn: int, req: int, w: asyncio.StreamWriter) -> bool:
        if req == 0:
            body = b'{"error": {"message": "model \'x\' not found"}}'
            w.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        else:
            err = b'data: {"error": {"message": "engine died", "code": 500}}\n\n'
            w.write(SSE_HEAD + _chunked(_event("a") + err + b"data: [DONE]\n\n"))
        return True

    async def main() -> None:
        async with ScriptedServer(handler) as server:
            client = HttpClient(server.url)
            rec = await send(client, "/v1/completions", b"{}", PROMPT, chat=False)
            assert not rec.success and rec.error == "HTTP 404: model 'x' not found"
            rec = await send(client, "/v1/completions", b"{}", PROMPT, chat=False)
            assert not rec.success and "engine died" in rec.error

    asyncio.run(main())


def test_a_body_delimited_by_close() -> None:
    async def handler(conn: int, req: int, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.0 200 OK\r\n\r\n" + _event("hi") + USAGE_EVENT + b"data: [DONE]\n\n")
        return False

    async def main() -> None:
        async with ScriptedServer(handler) as server:
            rec = await send(HttpClient(server.url), "/v1/completions", b"{}", PROMPT, chat=False)
            assert rec.success and rec.output_tokens == 4

    asyncio.run(main())


def test_refused_connection() -> None:
    async def main() -> None:
        client = HttpClient(f"http://127.0.0.1:{free_port()}")
        with pytest.raises(ConnectError, match="connection refused"):
            async with client.request("GET", "/v1/models"):
                pass
        rec = await send(client, "/v1/completions", b"{}", PROMPT, chat=False)
        assert not rec.success and "connection refused" in rec.error

    asyncio.run(main())
