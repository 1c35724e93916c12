"""Slow request heads (slowloris) on the real server: a head that is not complete within
--header-timeout gets 408 and its connection closed, on a fresh connection and on a kept-alive
one; a head over the size cap gets 431; other clients, slow-but-steady heads, slow bodies and
streamed responses are unaffected."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from serverproc import COMMON_ARGS, Server, start

from ember.server.http_heads import MAX_HEAD_BYTES

HEAD_TIMEOUT_S = 2.0
SLACK_S = 3.0  # a loaded 2-core machine may be late to fire or notice a timer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("slow_headers")
    s = start(tmp, "slow_headers", "tiny", *COMMON_ARGS, "--header-timeout", str(HEAD_TIMEOUT_S))
    yield s
    s.stop()


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=HEAD_TIMEOUT_S + SLACK_S)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """All the server sends until it closes the connection (socket timeout: it did not)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One Content-Length response off a kept-alive connection: (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ")[1]), body


def refused_in_time(sock: socket.socket, sent_at: float, status: int = 408) -> None:
    reply = read_until_closed(sock)
    waited = time.monotonic() - sent_at
    assert reply.startswith(b"HTTP/1.1 %d " % status), reply
    if status == 408:
        assert b"--header-timeout" in reply
        assert HEAD_TIMEOUT_S - 0.2 <= waited <= HEAD_TIMEOUT_S + SLACK_S, waited


def test_stalled_heads_are_closed_while_others_are_served(server: Server) -> None:
    stalled = [connect(server) for _ in range(20)]
    started = time.monotonic()
    for i, sock in enumerate(stalled):
        if i % 3 == 0:
            sock.sendall(b"GET /li")  # inside the request line
        elif i % 3 == 1:
            sock.sendall(
                b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a"
            )  # inside the headers
        # else: nothing at all, the head is due from the connection's start
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(5):
            assert client.get("/live").status_code == 200
        r = client.post("/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False})
        assert r.status_code == 200, r.text
    assert time.monotonic() - started < HEAD_TIMEOUT_S, "the other client waited for the stalls"
    for sock in stalled:
        with sock:
            refused_in_time(sock, started)


def test_a_second_request_that_stalls_on_a_kept_alive_connection_is_closed(
    server: Server,
) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock)[0] == 200
        sock.sendall(b"GET /live HTTP/1.1\r\nHo")
        refused_in_time(sock, time.monotonic())


def test_a_head_trickled_past_the_deadline_is_closed(server: Server) -> None:
    """Each byte arrives in good time, but the deadline is the whole head's."""
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /live HTTP/1.1\r\n")
        while time.monotonic() - started < HEAD_TIMEOUT_S + SLACK_S:
            if select.select([sock], [], [], 0.25)[0]:  # the server answered: it gave up
                break
            sock.sendall(b"X")  # an endless header name, a byte every 0.25 s
        refused_in_time(sock, started)


def test_slow_but_steady_heads_are_served(server: Server) -> None:
    head = b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n\r\n"
    with connect(server) as sock:
        for i in range(0, len(head), 10):
            sock.sendall(head[i : i + 10])
            time.sleep(0.15)  # 6 pieces: under a second, inside the 2 s deadline
        assert read_response(sock)[0] == 200
        time.sleep(HEAD_TIMEOUT_S + 0.5)  # within keep-alive's 5 s: still open, no 408
        sock.sendall(head)
        assert read_response(sock)[0] == 200


def test_slow_bodies_and_streamed_responses_are_not_cut_by_the_head_deadline(
    server: Server,
) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    body = json.dumps({"model": "no-such-model", "messages": msgs, "pad": "x" * 1_000_000})
    with connect(server) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        step = len(body) // 6 + 1
        for i in range(0, len(body), step):  # the body over 3 s, longer than heads get
            sock.sendall(body[i : i + step].encode())
            time.sleep(0.5)
        status, answer = read_response(sock)
        assert status == 404, answer
        gen = {"model": "tiny", "prompt": "hi", "options": {"num_predict": 8}}
        payload = json.dumps(gen).encode()
        sock.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s"
            % (len(payload), payload)
        )
        streamed = b""
        while not streamed.endswith(b"0\r\n\r\n"):  # the chunked stream's last chunk
            chunk = sock.recv(65536)
            assert chunk, streamed
            streamed += chunk
        assert b'"done":true' in streamed.replace(b" ", b"")
        sock.sendall(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock)[0] == 200


def test_a_head_over_the_size_cap_is_431(server: Server) -> None:
    with connect(server) as sock:
        # Incomplete, and all of it read by the server, so that it closes with a FIN (not a
        # reset that could discard the answer).
        sock.sendall(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"y" * MAX_HEAD_BYTES)
        refused_in_time(sock, time.monotonic(), status=431)
    big_but_allowed = {"X-Big": "y" * (MAX_HEAD_BYTES // 2)}
    assert httpx.get(server.url + "/live", headers=big_but_allowed).status_code == 200
