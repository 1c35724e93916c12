"""The one exception family that crosses module lines.

Each carries an HTTP status so that the server can map it to either API's error format
without knowing where it came from.
"""

from __future__ import annotations


class EmberError(Exception):
    status_code: int = 500

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequestError(EmberError, ValueError):
    """Something the client sent is wrong; the message says what and how to fix it. A
    ValueError too, as vLLM's validation errors are, so that `except ValueError` catches it."""

    status_code = 400


class ModelNotFoundError(EmberError):
    status_code = 404


class ServerBusyError(EmberError):
    status_code = 503


class ConflictError(EmberError):
    """Something else holds what the request needs (a running pull of the same model)."""

    status_code = 409


class ModelLoadError(EmberError):
    """A model directory or file cannot be loaded (missing file, bad config, unsupported arch)."""

    status_code = 500


class AuthenticationError(EmberError):
    """No valid API key or ID token; answered with `WWW-Authenticate: Bearer`."""

    status_code = 401


class PayloadTooLargeError(EmberError):
    status_code = 413


class RequestStalledError(EmberError):
    """The client stopped sending its request's body part-way."""

    status_code = 408


class RequestTimeoutError(EmberError):
    """The request ran past --request-timeout; it was stopped and its KV blocks freed."""

    status_code = 504
