"""Errors as each API family writes them.

Ollama routes answer `{"error": "..."}`; OpenAI routes (everything under /v1/) answer
`{"error": {"message", "type", "param", "code"}}` with vLLM's type names; Anthropic's
/v1/messages routes `{"type": "error", "error": {"type", "message"}}` with Anthropic's type
names. One handler per exception kind picks the family from the request path.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.errors import EmberError, InvalidRequestError

log = logging.getLogger("ember.server")

BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"

# vLLM's error `type` for each status it answers with.
_OPENAI_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "BadRequestError",
    504: "TimeoutError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


# Anthropic's error `type` for each status ember answers with; others are "api_error". A full
# queue stays a 503 (with Retry-After), as Ollama answers it, typed "api_error": the SDK retries
# any 5xx, while Claude Code takes an "overloaded_error" for Anthropic's own overload (its
# background requests give up at once, the others after 3, then it wants a fallback model).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class ClientDisconnected(Exception):
    """The client went away; nothing can be sent back."""


def is_anthropic_path(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def anthropic_error(status: int, message: str) -> dict[str, object]:
    """Anthropic's error body (also the data of a stream's `error` event)."""
    err_type = _ANTHROPIC_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": err_type, "message": message}}


def is_openai_path(path: str) -> bool:
    return path.startswith("/v1/") or path in ("/v1", "/tokenize", "/detokenize")


# Seconds a client should wait before retrying a 503 (queue full, draining, engine restarting).
RETRY_AFTER_S = 1


def error_response(path: str, status: int, message: str, param: str | None = None) -> JSONResponse:
    """The error body of the path's API family; 503s say when to retry, 401s how to log in."""
    headers: dict[str, str] = {}
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    elif status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="ember"'
    body: dict[str, object]
    if is_anthropic_path(path):
        body = anthropic_error(status, message)
    elif is_openai_path(path):
        err_type = _OPENAI_TYPES.get(status, HTTPStatus(status).phrase.replace(" ", "") + "Error")
        body = {"error": {"message": message, "type": err_type, "param": param, "code": status}}
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)


_SCALAR_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "none"})


def _union_tag(part: object) -> bool:
    """Whether a pydantic error location part names a union member's type ("str",
    "list[str]", "function-after[...]") rather than a field: not for users' eyes."""
    return isinstance(part, str) and (part in _SCALAR_TAGS or "[" in part)


def validation_message(err: ValidationError | RequestValidationError) -> InvalidRequestError:
    """The first problem pydantic found, as a message naming the field."""
    first = err.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _union_tag(p)]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "json_invalid":
        return InvalidRequestError(f"invalid JSON body: {msg}")
    if param is None:
        return InvalidRequestError(f"invalid request body: {msg}")
    return InvalidRequestError(f"invalid value for '{param}': {msg}", param=param)


def install_error_handlers(app: FastAPI) -> None:
    async def on_ember_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, EmberError)
        if exc.status_code in (501, 503):  # deliberate: not implemented, busy or draining
            log.warning("%s %s: %s", request.method, request.url.path, exc.message)
        elif exc.status_code >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return error_response(request.url.path, exc.status_code, exc.message, exc.param)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError | ValidationError)
        err = validation_message(exc)
        return error_response(request.url.path, 400, err.message, err.param)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"{request.method} {request.url.path} not found"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed for {request.url.path}"
        return error_response(request.url.path, exc.status_code, message)

    async def on_disconnect(request: Request, exc: Exception) -> Response:
        # Nobody reads this; 499 (nginx's "client closed request") keeps access logs honest.
        return Response(status_code=499)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request.url.path, 500, f"internal error: {exc}")

    app.add_exception_handler(EmberError, on_ember_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(ClientDisconnected, on_disconnect)
    app.add_exception_handler(Exception, on_unexpected)


class CatchUnexpected:
    """Turns an unexpected exception into a JSON 500 inside the app (added innermost). Starlette's
    own handler for Exception answers and then re-raises to the server, and uvicorn then closes
    the keep-alive connection without `Connection: close`: a pooled client's next request on it
    fails. Once a response has started nothing can be sent, so the exception goes on up."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            if started:
                raise
            path = scope.get("path", "")
            log.exception("unhandled error on %s %s", scope.get("method"), path)
            await error_response(path, 500, f"internal error: {exc}")(scope, receive, send)
