"""Property-based fuzzing of every read-only and inference route on the real server: malformed
JSON, wrong types, huge and negative numbers, invalid UTF-8, odd unicode. The rule: no 5xx, no
hang, no "internal error" inside a stream, and the server still healthy afterwards. Bounded:
a fixed number of derandomized examples against a server with a 128-token context.

Routes that change the model store or reach the network (pull, push, create, copy, delete,
blobs) are left out: a fuzzer must not delete the models other tests use.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serverproc import COMMON_ARGS, Server, start

POST_ROUTES = (
    "/api/generate",
    "/api/chat",
    "/api/show",
    "/api/embed",
    "/api/embeddings",
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/tokenize",
    "/detokenize",
)
GET_ROUTES = ("/", "/api/version", "/api/tags", "/api/ps", "/v1/models", "/version", "/metrics")

# Every JSON type, with the edges that break servers: huge and negative integers, floats at the
# limits, control characters, unpaired surrogates, right-to-left marks, emoji.
ODD_TEXT = st.sampled_from(
    ["", "tiny", "tiny:latest", "\u202e\u0000\ufeff", "😀" * 50, "\\ud800", "a" * 3000]
)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=40), ODD_TEXT)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=25,
)

FIELDS = [
    "model",
    "prompt",
    "messages",
    "system",
    "context",
    "raw",
    "stream",
    "format",
    "options",
    "keep_alive",
    "think",
    "tools",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "logprobs",
    "top_logprobs",
    "stop",
    "seed",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "stream_options",
    "ignore_eos",
    "stop_token_ids",
    "min_tokens",
    "echo",
    "best_of",
    "suffix",
    "response_format",
    "tokens",
    "input",
    "add_special_tokens",
    "images",
    "template",
]
OPTION_FIELDS = [
    "num_predict",
    "num_ctx",
    "seed",
    "top_k",
    "top_p",
    "temperature",
    "stop",
    "repeat_penalty",
]

MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "robot"])},
    optional={"content": st.one_of(ODD_TEXT, st.text(max_size=30), JSON)},
)
FIELD_VALUE: dict[str, st.SearchStrategy[Any]] = {
    "model": st.one_of(st.just("tiny"), ODD_TEXT, JSON),
    "messages": st.one_of(st.lists(MESSAGE, max_size=4), JSON),
    "prompt": st.one_of(st.text(max_size=60), st.lists(NUMBERS, max_size=8), JSON),
    "options": st.one_of(
        st.dictionaries(st.sampled_from(OPTION_FIELDS), st.one_of(NUMBERS, JSON), max_size=4),
        JSON,
    ),
    "stream": st.one_of(st.booleans(), JSON),
}


HI = [{"role": "user", "content": "hi"}]
# A valid body per route, so that mutating a field or two reaches the code past validation.
TEMPLATES: dict[str, dict[str, Any]] = {
    "/api/generate": {"model": "tiny", "prompt": "hi", "options": {"num_predict": 4}},
    "/api/chat": {"model": "tiny", "messages": HI, "options": {"num_predict": 4}},
    "/v1/completions": {"model": "tiny", "prompt": "hi", "max_tokens": 4},
    "/v1/chat/completions": {"model": "tiny", "messages": HI, "max_tokens": 4},
    "/tokenize": {"model": "tiny", "prompt": "hi"},
    "/detokenize": {"model": "tiny", "tokens": [1, 2, 3]},
}
SMALL_VALUES = st.one_of(SCALARS, st.lists(NUMBERS, max_size=4), st.lists(ODD_TEXT, max_size=3))


@st.composite
def bodies(draw: st.DrawFn, route: str) -> bytes:
    kinds = ["template"] * 4 + ["fields", "fields", "json", "bytes", "broken"]
    kind = draw(st.sampled_from(kinds))
    if kind == "template":
        body = dict(TEMPLATES.get(route, {"model": "tiny"}))
        for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3)):
            body[name] = draw(st.one_of(SMALL_VALUES, FIELD_VALUE.get(name, JSON)))
        if "options" in body and isinstance(body["options"], dict) and draw(st.booleans()):
            option = draw(st.sampled_from(OPTION_FIELDS))
            body["options"] = {**body["options"], option: draw(SMALL_VALUES)}
        return json.dumps(body).encode()
    if kind == "bytes":  # anything at all, usually invalid UTF-8
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    names = draw(st.lists(st.sampled_from(FIELDS), max_size=8, unique=True))
    body = {"model": "tiny"} if draw(st.booleans()) else {}
    for name in names:
        body[name] = draw(FIELD_VALUE.get(name, JSON))
    # Bound the work of the requests that turn out valid (the context is 128 tokens anyway).
    if draw(st.booleans()):
        body.setdefault("max_tokens", 4)
        body.setdefault("options", {"num_predict": 4})
    raw = json.dumps(body).encode()
    if kind == "broken":  # cut short, or with a raw byte that is not UTF-8 inside
        cut = draw(st.integers(min_value=0, max_value=len(raw)))
        return raw[:cut] + draw(st.sampled_from([b"", b"\xff", b"\xc3", b"NaN", b"}"]))
    return raw


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("fuzz")
    args = [a if a != "512" else "128" for a in COMMON_ARGS]  # --context-length 128
    s = start(tmp, "fuzz", "tiny", *args, "--num-parallel", "4")
    yield s
    s.stop()


def check(r: httpx.Response, what: str) -> None:
    assert r.status_code < 500, (what, r.status_code, r.text[:300])
    assert "internal error" not in r.text, (what, r.text[:300])


FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@FUZZ
@given(data=st.data(), route=st.sampled_from(POST_ROUTES))
def test_post_routes_never_fail_on_bad_input(
    fuzz_server: Server, data: st.DataObject, route: str
) -> None:
    body = data.draw(bodies(route))
    headers = {"Content-Type": "application/json"}
    r = httpx.post(fuzz_server.url + route, content=body, headers=headers, timeout=30)
    check(r, f"POST {route} {body[:200]!r}")


@settings(FUZZ, max_examples=50)
@given(
    route=st.sampled_from(GET_ROUTES),
    query=st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3),
    body=st.binary(max_size=50),
)
def test_get_routes_never_fail_on_bad_input(
    fuzz_server: Server, route: str, query: dict[str, str], body: bytes
) -> None:
    r = httpx.request("GET", fuzz_server.url + route, params=query, content=body, timeout=30)
    check(r, f"GET {route} {query!r}")


def test_server_is_healthy_and_idle_after_fuzzing(fuzz_server: Server) -> None:
    assert httpx.get(fuzz_server.url + "/health").status_code == 200
    m = fuzz_server.metrics()
    assert m["vllm:num_requests_running"] == 0 and m["ember:kv_cache_used_blocks"] == 0
