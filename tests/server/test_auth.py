"""Auth on the real server: API keys (both clients), Google-style ID tokens checked against a JWKS
served on loopback by the test, and the refusals: expired, wrong audience, wrong issuer, bad
signature, alg none, unknown emails."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import ollama
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from serverproc import COMMON_ARGS, Server, start

from ember.errors import AuthenticationError
from ember.server.auth import Authenticator, JwksCache, OidcVerifier

AUDIENCE = "https://ember-test.a.run.app"
KID = "test-key-1"
EMAIL = "caller@project.iam.gserviceaccount.com"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


SIGNING_KEY = new_key()
OTHER_KEY = new_key()


class Jwks:
    """A JWKS endpoint on loopback, counting its fetches."""

    def __init__(self) -> None:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(SIGNING_KEY.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": KID, "alg": "RS256", "use": "sig"}]}).encode()
        outer = self
        self.fetches = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/oauth2/v3/certs"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def token(key: Any = SIGNING_KEY, alg: str = "RS256", kid: str = KID, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "aud": AUDIENCE,
        "iss": "https://accounts.google.com",
        "sub": "1234567890",
        "email": EMAIL,
        "email_verified": True,
        "iat": now,
        "exp": now + 3600,
        **overrides,
    }
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def alg_none_token() -> str:
    good = token()
    header = jwt.utils.base64url_encode(json.dumps({"alg": "none", "kid": KID}).encode())
    return f"{header.decode()}.{good.split('.')[1]}."


BAD_TOKENS = {
    "expired": lambda: token(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
    "wrong audience": lambda: token(aud="https://someone-else.a.run.app"),
    "wrong issuer": lambda: token(iss="https://evil.example.com"),
    "bad signature": lambda: token(key=OTHER_KEY),
    "alg none": alg_none_token,
    "HS256 with the public key": lambda: token(key="not-a-secret-but-32-bytes-long!!", alg="HS256"),
    "not yet valid": lambda: token(nbf=int(time.time()) + 3600),
    "unknown kid": lambda: token(kid="other-kid"),
    "no exp": lambda: token(exp=None),
}


@pytest.fixture(scope="module")
def jwks() -> Iterator[Jwks]:
    j = Jwks()
    yield j
    j.close()


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory, jwks: Jwks) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("auth")
    key_file = tmp / "keys.txt"
    key_file.write_text("# keys for the test\nkey-from-file\n\n")
    s = start(
        tmp,
        "auth",
        "tiny",
        *COMMON_ARGS,
        "--api-key",
        "key-one",
        "--api-key",
        "key-two",
        "--api-key-file",
        str(key_file),
        "--auth-oidc",
        AUDIENCE,
        "--oidc-jwks-url",
        jwks.url,
        "--protect-metrics",
    )
    yield s
    s.stop()


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def test_probes_stay_open_and_the_api_is_closed(auth_server: Server) -> None:
    url = auth_server.url
    assert httpx.get(url + "/live").status_code == 200
    assert httpx.get(url + "/health").status_code == 200
    r = httpx.get(url + "/metrics")  # --protect-metrics
    assert r.status_code == 401
    assert httpx.get(url + "/metrics", headers=bearer("key-one")).status_code == 200

    r = httpx.post(url + "/api/generate", json={"model": "tiny", "prompt": "hi"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert isinstance(r.json()["error"], str) and "Authorization" in r.json()["error"]

    r = httpx.get(url + "/v1/models", headers=bearer("wrong-key"))
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    err = r.json()["error"]
    assert err["code"] == 401 and err["type"] == "AuthenticationError"


def test_api_keys_work_with_both_clients(auth_server: Server) -> None:
    client = ollama.Client(host=auth_server.url, headers=bearer("key-two"))
    reply = client.generate(model="tiny", prompt="hi", options={"num_predict": 2})
    assert reply.done

    oai = openai.OpenAI(base_url=auth_server.url + "/v1", api_key="key-from-file")
    out = oai.completions.create(model="tiny", prompt="hi", max_tokens=2)
    assert out.choices[0].text is not None

    bad = openai.OpenAI(base_url=auth_server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=auth_server.url).list()
    assert e.value.status_code == 401


def test_a_good_id_token_is_accepted_from_either_header(auth_server: Server) -> None:
    url = auth_server.url + "/v1/models"
    assert httpx.get(url, headers=bearer(token())).status_code == 200
    assert httpx.get(url, headers=bearer(token(iss="accounts.google.com"))).status_code == 200
    # Cloud Run: the platform's credential in Authorization, the caller's token here
    headers = {"X-Serverless-Authorization": f"Bearer {token()}", **bearer("platform")}
    assert httpx.get(url, headers=headers).status_code == 200


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_bad_id_tokens_are_refused(auth_server: Server, case: str) -> None:
    r = httpx.get(auth_server.url + "/api/tags", headers=bearer(BAD_TOKENS[case]()))
    assert r.status_code == 401, (case, r.text)
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_email_allow_list_and_key_cache(jwks: Jwks) -> None:
    async def main() -> None:
        cache = JwksCache(jwks.url)
        verifier = OidcVerifier(AUDIENCE, cache, frozenset({EMAIL}))
        before = jwks.fetches
        assert (await verifier.verify(token()))["email"] == EMAIL
        await verifier.verify(token())
        await verifier.verify(token(email=EMAIL.upper()))  # emails match whatever their case
        with pytest.raises(AuthenticationError, match="may not call"):
            await verifier.verify(token(email="other@project.iam.gserviceaccount.com"))
        with pytest.raises(AuthenticationError, match="may not call"):
            await verifier.verify(token(email_verified=False))
        with pytest.raises(AuthenticationError, match="unknown key"):
            await verifier.verify(token(kid="rotated"))
        assert jwks.fetches == before + 1  # cached; an unknown kid refetches at most every 30 s

    asyncio.run(main())


def test_x_api_key_carries_an_api_key_on_every_route(auth_server: Server) -> None:
    """Anthropic's clients send the key as x-api-key; it opens every route, not an ID token."""
    url = auth_server.url
    for path in ("/v1/models", "/api/tags"):
        assert httpx.get(url + path, headers={"x-api-key": "key-one"}).status_code == 200
        assert httpx.get(url + path, headers={"x-api-key": "nope"}).status_code == 401
    id_token = token()
    assert httpx.get(url + "/v1/models", headers={"x-api-key": id_token}).status_code == 401
    assert httpx.get(url + "/v1/models", headers=bearer(id_token)).status_code == 200

    auth = Authenticator(frozenset({"k"}), None)
    asyncio.run(auth.check({"x-api-key": " k "}))
    with pytest.raises(AuthenticationError) as e:
        asyncio.run(auth.check({}))
    assert "x-api-key" in e.value.message


def test_api_key_file_must_be_readable(tmp_path: Path) -> None:
    s = Server(tmp_path / "nokeys.log", "tiny", *COMMON_ARGS, "--api-key-file", "/no/such/file")
    try:
        assert s.proc.wait(timeout=60) == 2
    finally:
        s.stop()
    assert "--api-key-file" in s.log()


def test_api_keys_from_flags_and_environment() -> None:
    from ember.cli import build_parser
    from ember.config import ServeConfig, config_flags

    args = build_parser().parse_args(["serve", "--api-key", "a", "--api-key", "b,c"])
    assert ServeConfig.from_sources(config_flags(args), {}).api_key == ("a", "b", "c")
    env = {"EMBER_API_KEY": "k1, k2", "EMBER_AUTH_OIDC": AUDIENCE}
    config = ServeConfig.from_sources({}, env)
    assert config.api_key == ("k1", "k2") and config.auth_oidc == AUDIENCE
