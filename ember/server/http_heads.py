"""uvicorn's HTTP/1.1 protocol with a deadline on request heads and a cap on their size.

uvicorn closes a keep-alive connection that sits idle between requests, but not one whose
request head (request line and headers) starts and never completes: a client that sends
"GET / HTTP/1.1\\r\\nHost: x" and stalls (slowloris) holds a connection, its file descriptor and
a place in every drain for ever, and a few hundred of them starve the server. Here a head must be
complete within --header-timeout of the connection opening (its first request) or of the first
byte of a later request on it, else the server answers 408 and closes the connection. The
deadline is not extended by each byte, so trickling a head slowly does not help. A head of more
than MAX_HEAD_BYTES gets 431 and the connection is closed (h11 caps heads too, with a bare 400;
httptools does not cap them at all). Bodies have their own deadline (limits.BodyLimit).

Which parser runs is uvicorn's "auto" choice: httptools when it is installed, else h11.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

# Request line plus headers, in bytes. Go's net/http (Ollama) allows 1 MiB and h11 16 KiB; ID
# tokens and browser cookies fit easily in this, and it bounds what a connection may buffer.
MAX_HEAD_BYTES = 64 * 1024

# h11's own cap stays above ours by more than one read (asyncio reads <= 256 KiB at a time), so
# that ours, with its 431, is the one that answers.
H11_INCOMPLETE_EVENT_BYTES = MAX_HEAD_BYTES + 1024 * 1024


class HeadWatch:
    """One connection's head deadline: a timer that runs while a request head is incomplete."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, timeout_s: float
    ) -> None:
        self.loop = loop
        self.transport = transport
        self.timeout_s = timeout_s
        self._timer: asyncio.TimerHandle | None = None

    def update(self, pending: bool, head_bytes: int) -> None:
        """Called after input: `pending` says whether a request head is under way and
        incomplete, `head_bytes` how much of it has arrived."""
        if not pending or self.transport.is_closing():
            self.stop()
        elif head_bytes > MAX_HEAD_BYTES:
            self.stop()
            self._refuse(
                431,
                b"Request Header Fields Too Large",
                f"the request line and headers are larger than {MAX_HEAD_BYTES} bytes; "
                "send fewer or shorter headers",
            )
        elif self._timer is None:  # armed once per head: later bytes do not extend it
            self._timer = self.loop.call_later(self.timeout_s, self._expire)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self._refuse(
                408,
                b"Request Timeout",
                f"the request headers did not arrive within {self.timeout_s:g}s "
                "(--header-timeout); send the whole request at once",
            )

    def _refuse(self, status: int, reason: bytes, text: str) -> None:
        body = text.encode()
        head = b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n" % (status, reason)
        head += b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        self.transport.write(head + body)
        # close() waits for unsent bytes, which a client that does not read would hold back.
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()


class H11HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol with a HeadWatch."""

    head_timeout_s: ClassVar[float] = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_watch = HeadWatch(self.loop, transport, self.head_timeout_s)
        self._watch_head()  # the first request's head is due from now

    def connection_lost(self, exc: Exception | None) -> None:
        self.head_watch.stop()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start on a pipelined request's buffered head
        self._watch_head()

    def _watch_head(self) -> None:
        # IDLE: h11 has not parsed this request's head yet. Between requests on a kept-alive
        # connection nothing has arrived (and uvicorn's keep-alive timer runs); before the
        # first request (no cycle yet) the head is due anyway.
        if self.conn.their_state is not h11.IDLE:
            self.head_watch.update(False, 0)
            return
        buffered = len(self.conn.trailing_data[0])  # a copy, but only of an unparsed head
        self.head_watch.update(buffered > 0 or self.cycle is None, buffered)


def protocol_class(head_timeout_s: float) -> type[asyncio.Protocol]:
    """The HTTP protocol class for uvicorn.Config(http=...): uvicorn's auto choice (httptools
    if installed, else h11) with heads due within `head_timeout_s` seconds."""
    base: type[Any]
    try:
        import httptools  # noqa: F401
    except ImportError:
        base = H11HeadDeadline
    else:
        from ember.server.http_heads_httptools import HttpToolsHeadDeadline

        base = HttpToolsHeadDeadline
    return type(base.__name__, (base,), {"head_timeout_s": head_timeout_s})
