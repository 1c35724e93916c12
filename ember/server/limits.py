"""Limits on what one request may cost: body size, JSON shape, and time.

`BodyLimit` reads each request body in full (at most --max-body-size bytes, else 413) before the
routes see it, so no route can be made to buffer without bound. `parse_json` turns a body into
JSON that cannot hurt the server: no NaN or Infinity, no integers of thousands of digits, no
nesting that exhausts the parser's recursion. A `Budget` is one request's time: its deadline
(--request-timeout) and an early stop (drain); its `Generation` aborts the engine request when
the budget ends and reports the budget's error instead of the abort.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.errors import (
    EmberError,
    InvalidRequestError,
    PayloadTooLargeError,
    RequestStalledError,
    RequestTimeoutError,
)
from ember.server.errors import error_response

BUDGET_SCOPE_KEY = "ember.budget"


def parse_json(raw: bytes) -> Any:
    """The JSON value of a request body; raises InvalidRequestError (400) for anything that is
    not plain, finite JSON."""

    def no_constants(name: str) -> Any:
        raise InvalidRequestError(f"invalid JSON body: {name} is not a JSON number")

    try:
        value = json.loads(raw, parse_constant=no_constants)
    except InvalidRequestError:
        raise  # a ValueError too, worded already (no_constants)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidRequestError(f"invalid JSON body: {e}") from None
    except RecursionError:
        raise InvalidRequestError("invalid JSON body: nested too deeply") from None
    except ValueError as e:  # e.g. an integer past Python's digit limit
        raise InvalidRequestError(f"invalid JSON body: {e}") from None
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
        raise InvalidRequestError(
            f"invalid JSON body: nested more than {MAX_JSON_DEPTH} levels deep (tools, schemas "
            "and template arguments must be flatter)"
        )
    if _ESCAPED_SURROGATE.search(raw) and _has_lone_surrogate(value):
        raise InvalidRequestError(
            "invalid JSON body: a string holds an unpaired UTF-16 surrogate (\\ud800-\\udfff)"
        )
    return value


# Deeper bodies are refused: what reads them later (chat templates, schema compilers) recurses.
MAX_JSON_DEPTH = 100


def _deeper_than(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


# Only "\\uD800"-style escapes can put a surrogate into a parsed string (raw UTF-8 cannot).
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_lone_surrogate(value: Any) -> bool:
    """Whether any string in `value` holds a surrogate (json pairs valid ones into one char)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


# Blob uploads (model weights, gigabytes) are streamed to disk by their route, never buffered.
STREAMED_UPLOAD_PREFIX = "/api/blobs/"


# A body must arrive within this long of its headers: a client that sends part and stalls
# (slowloris) would otherwise hold its connection, and a drain, for as long as it likes.
BODY_READ_TIMEOUT_S = 30.0


async def without_stalls(
    chunks: AsyncIterator[bytes], timeout_s: float = BODY_READ_TIMEOUT_S
) -> AsyncIterator[bytes]:
    """A streamed upload's chunks, each due within `timeout_s` of the last (408 otherwise): an
    upload may be large (blobs skip --max-body-size) but may not stall and hold its
    connection and its half-written file for ever."""
    it = chunks.__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(it.__anext__(), timeout_s)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise RequestStalledError(
                f"the upload sent nothing for {timeout_s:g}s; send the file again at once"
            ) from None
        yield chunk


class BodyLimit:
    """ASGI middleware: bodies over `max_bytes` are refused with 413 before a route runs, and
    bodies that do not arrive within `read_timeout_s` with 408."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, read_timeout_s: float = BODY_READ_TIMEOUT_S
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(STREAMED_UPLOAD_PREFIX):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                await self._too_slow(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return  # nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # afterwards only http.disconnect arrives

        await self.app(scope, replay, send)

    async def _too_slow(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = RequestStalledError(
            f"the request body did not arrive within {self.read_timeout_s:g}s of its headers; "
            "send the whole body at once"
        )
        response = error_response(scope["path"], err.status_code, err.message)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = PayloadTooLargeError(
            f"the request body is larger than the server's limit of {self.max_bytes} bytes; "
            "send a shorter prompt, or raise --max-body-size"
        )
        response = error_response(scope["path"], err.status_code, err.message)
        response.headers["Connection"] = "close"  # the rest of the body is never read
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class Budget:
    """One request's time: it ends at its deadline (--request-timeout) or when `stop` is called
    (drain), whichever comes first. Whatever holds engine work registers `on_stop` to abort it;
    the error says why, for the client. No per-token cost: one timer per request."""

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self.error: EmberError | None = None
        self._callbacks: list[Callable[[EmberError], None]] = []
        loop = asyncio.get_running_loop()
        self._timer = None if timeout_s is None else loop.call_later(timeout_s, self._expire)

    def _expire(self) -> None:
        self.stop(
            RequestTimeoutError(
                f"the request ran longer than the server's limit of {self.timeout_s:g}s "
                "(--request-timeout); ask for fewer tokens"
            )
        )

    def stop(self, error: EmberError) -> None:
        if self.error is not None:
            return
        self.error = error
        callbacks, self._callbacks = self._callbacks, []
        self.close()
        for callback in callbacks:
            callback(error)

    def on_stop(self, callback: Callable[[EmberError], None]) -> None:
        if self.error is not None:
            callback(self.error)
        else:
            self._callbacks.append(callback)

    def close(self) -> None:
        """The request is over: no timer, no callbacks."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._callbacks.clear()


def budget_of(scope: Scope) -> Budget | None:
    budget = scope.get(BUDGET_SCOPE_KEY)
    return budget if isinstance(budget, Budget) else None
