"""The httptools variant of http_heads.H11HeadDeadline; imported only where httptools is."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ember.server.http_heads import HeadWatch


class HttpToolsHeadDeadline(HttpToolsProtocol):
    """uvicorn's httptools protocol with a HeadWatch. The parser's callbacks say when a head
    begins and ends; its size is counted from the bytes fed while one is open, so a read that
    ends one head and starts the next may go uncounted (bounded: one read)."""

    head_timeout_s: ClassVar[float] = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_watch = HeadWatch(self.loop, transport, self.head_timeout_s)
        self.in_head = True  # the first request's head is due from now
        self.head_bytes = 0
        self.head_watch.update(True, 0)

    def connection_lost(self, exc: Exception | None) -> None:
        self.head_watch.stop()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.in_head:
            self.head_bytes += len(data)
        super().data_received(data)
        self.head_watch.update(self.in_head, self.head_bytes)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_bytes = 0
        super().on_headers_complete()
