"""Keeps web pages from driving a server on this machine, as Ollama does.

A page may POST to any address without asking first when the body is "simple" (text/plain), and
CORS then only hides the answer from the page: the request has run. So a request that carries an
Origin the server does not allow (--origins, local pages by default) gets 403 before any route
runs. And a page on another site can point its own host name at 127.0.0.1 (DNS rebinding) to
read answers too: a server listening on a loopback address answers only requests addressed to a
local name (localhost, a loopback or private address, this machine's name, *.localhost,
*.local, *.internal). Clients that are not browsers send no Origin and a local Host.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from ember.server.errors import error_response

OriginAllowed = Callable[[str], bool]


def origin_matcher(exact: list[str], pattern: str | None, any_origin: bool) -> OriginAllowed:
    regex = re.compile(pattern) if pattern else None

    def allowed(origin: str) -> bool:
        return any_origin or origin in exact or bool(regex and regex.fullmatch(origin))

    return allowed


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    """The name in a Host header, without its port."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8080
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_local_name(host: str) -> bool:
    name = _host_name(host)
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        local_suffix = name.endswith((".localhost", ".local", ".internal"))
        return name in ("localhost", socket.gethostname().lower()) or local_suffix
    return ip.is_loopback or ip.is_private or ip.is_unspecified


class BrowserGuard:
    """ASGI middleware (inside CORS, which answers preflights): 403 for a disallowed Origin
    (unless it is the request's own host) and, on a loopback bind, for a Host that is not
    local."""

    def __init__(self, app: ASGIApp, origin_allowed: OriginAllowed, loopback: bool) -> None:
        self.app = app
        self.origin_allowed = origin_allowed
        self.loopback = loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self._problem(scope)
            if problem is not None:
                await error_response(scope["path"], 403, problem)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _problem(self, scope: Scope) -> str | None:
        headers = {
            k.decode(): v.decode("latin-1")
            for k, v in scope["headers"]
            if k in (b"origin", b"host")
        }
        host = headers.get("host", "")
        if self.loopback and host and not is_local_name(host):
            return (
                f"host '{host}' is not this machine: a server on a loopback address answers "
                "only local names (start it with --host 0.0.0.0 to serve other names)"
            )
        origin = headers.get("origin")
        if origin is None or self.origin_allowed(origin) or _same_host(origin, host):
            return None
        return (
            f"origin '{origin}' is not allowed to call this server; add it with --origins "
            "(OLLAMA_ORIGINS)"
        )


def _same_host(origin: str, host: str) -> bool:
    return bool(host) and origin.split("://", 1)[-1].lower() == host.lower()
