"""Who may call the API: static API keys, and Google-signed ID tokens as Cloud Run IAM checks them.

Every path but /live, /health and /ping (and /metrics unless --protect-metrics) needs a credential
once any is configured. An API key comes as `Authorization: Bearer KEY` or as `x-api-key: KEY`
(Anthropic's clients and Claude Code with ANTHROPIC_API_KEY send it so), on every route: it is
the same secret in another header, so accepting it everywhere exposes nothing more, and one rule
for all routes is easier to reason about. An ID token comes in `Authorization`, or in
`X-Serverless-Authorization: Bearer TOKEN` (which Cloud Run leaves for the service when
`Authorization` carries the service's own credential); it must be an RS256 JWT signed by a key of
the JWKS URL, with `aud` the configured audience, a Google `iss`, and `exp`/`iat`/`nbf` within a
small clock skew; with an allow-list, its verified `email` must be on it. A refusal is a 401 in the
path's API family's format with `WWW-Authenticate: Bearer`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from starlette.types import ASGIApp, Receive, Scope, Send

from ember.config import ConfigError, ServeConfig
from ember.errors import AuthenticationError
from ember.server.errors import error_response

log = logging.getLogger("ember.server")

GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
CLOCK_SKEW_S = 30  # accepted difference between our clock and the token issuer's
JWKS_TTL_S = 3600.0  # refetch the keys at least this often (Google rotates them over days)
JWKS_MIN_REFETCH_S = 30.0  # an unknown `kid` refetches at most this often
JWKS_TIMEOUT_S = 10.0
OPEN_PATHS = frozenset({"/live", "/health", "/ping"})


def load_api_keys(config: ServeConfig) -> frozenset[str]:
    """--api-key values and the lines of --api-key-file (blank lines and # comments skipped)."""
    keys = {k for k in config.api_key if k}
    if config.api_key_file is not None:
        try:
            text = Path(config.api_key_file).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read --api-key-file {config.api_key_file}: {e}") from None
        lines = (line.strip() for line in text.splitlines())
        keys.update(line for line in lines if line and not line.startswith("#"))
    return frozenset(keys)


class JwksCache:
    """The signing keys of a JWKS URL by `kid`: fetched on first use, refreshed every
    JWKS_TTL_S, and on an unknown `kid` (a rotation) at most every JWKS_MIN_REFETCH_S."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK | None:
        age = time.monotonic() - self._fetched_at
        if age > JWKS_TTL_S or (kid not in self._keys and age > JWKS_MIN_REFETCH_S):
            async with self._lock:  # one fetch for many waiting requests
                age = time.monotonic() - self._fetched_at
                if age > JWKS_TTL_S or (kid not in self._keys and age > JWKS_MIN_REFETCH_S):
                    await self._refresh()
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        try:
            data = await asyncio.to_thread(_fetch_json, self.url)
            keys = jwt.PyJWKSet.from_dict(data).keys
        except Exception as e:  # keep the keys we have; retry after JWKS_MIN_REFETCH_S
            log.warning("cannot fetch the ID-token signing keys from %s: %s", self.url, e)
            self._fetched_at = time.monotonic() - JWKS_TTL_S + JWKS_MIN_REFETCH_S
            return
        self._keys = {k.key_id: k for k in keys if k.key_id}
        self._fetched_at = time.monotonic()


def _fetch_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=JWKS_TIMEOUT_S) as resp:
        return json.loads(resp.read())


@dataclass(slots=True)
class OidcVerifier:
    audience: str
    jwks: JwksCache
    allowed_emails: frozenset[str] = frozenset()

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims; raises AuthenticationError saying what is wrong with it."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthenticationError("the bearer token is not a valid JWT") from None
        if header.get("alg") != "RS256":
            raise AuthenticationError("ID tokens must be signed with RS256")
        key = await self.jwks.key(str(header.get("kid", "")))
        if key is None:
            raise AuthenticationError("the ID token is signed by an unknown key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=self.audience,
                issuer=GOOGLE_ISSUERS,
                leeway=CLOCK_SKEW_S,
                options={"require": ["exp", "iat", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("the ID token has expired") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError("the ID token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationError("the ID token was not issued by Google") from None
        except jwt.InvalidTokenError as e:
            raise AuthenticationError(f"invalid ID token: {e}") from None
        if self.allowed_emails:
            email = claims.get("email")
            email = email.lower() if isinstance(email, str) else email  # the list is lower-cased
            if claims.get("email_verified") is not True or email not in self.allowed_emails:
                raise AuthenticationError(f"{email or 'this identity'} may not call this service")
        return claims


class Authenticator:
    def __init__(self, api_keys: frozenset[str], oidc: OidcVerifier | None) -> None:
        self._keys = [k.encode() for k in api_keys]
        self.oidc = oidc

    @classmethod
    def from_config(cls, config: ServeConfig) -> Authenticator | None:
        """None when no credential is configured (the API is open)."""
        keys = load_api_keys(config)
        oidc = None
        if config.auth_oidc:
            if not config.oidc_allowed_emails:
                log.warning(
                    "--auth-oidc without --oidc-allowed-emails accepts an ID token of ANY Google "
                    "identity for audience %s (anyone can mint one): rely on it only behind "
                    "Cloud Run IAM, which checks roles/run.invoker first, or list the callers",
                    config.auth_oidc,
                )
            emails = frozenset(e.lower() for e in config.oidc_allowed_emails)
            oidc = OidcVerifier(config.auth_oidc, JwksCache(config.oidc_jwks_url), emails)
        if not keys and oidc is None:
            return None
        return cls(keys, oidc)

    def key_matches(self, token: str) -> bool:
        given = token.encode()
        # compare_digest against every key: the time taken says nothing about which matched
        return any([hmac.compare_digest(given, k) for k in self._keys])

    async def check(self, headers: dict[str, str]) -> None:
        """Raise AuthenticationError unless the headers carry a valid credential."""
        tokens = [
            t
            for t in (
                _bearer(headers.get("x-serverless-authorization")),
                _bearer(headers.get("authorization")),
            )
            if t
        ]
        api_key = (headers.get("x-api-key") or "").strip()  # a key only, never an ID token
        if not tokens and not api_key:
            raise AuthenticationError(
                "missing credentials: send 'Authorization: Bearer <API key or ID token>' "
                "or 'x-api-key: <API key>'"
            )
        if any(self.key_matches(t) for t in [*tokens, api_key] if t):
            return
        if self.oidc is None:
            raise AuthenticationError("invalid API key")
        error: AuthenticationError | None = None
        for token in tokens:
            if token.count(".") != 2:
                continue
            try:
                await self.oidc.verify(token)
                return
            except AuthenticationError as e:
                error = error or e
        raise error or AuthenticationError("invalid API key or ID token")


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class AuthGuard:
    """ASGI middleware: every path but the open ones needs a credential."""

    def __init__(self, app: ASGIApp, auth: Authenticator, protect_metrics: bool) -> None:
        self.app = app
        self.auth = auth
        self.open_paths = OPEN_PATHS if protect_metrics else OPEN_PATHS | {"/metrics"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            await self.auth.check(headers)
        except AuthenticationError as e:
            response = error_response(scope["path"], 401, e.message)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
