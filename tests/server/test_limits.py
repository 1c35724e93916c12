"""Limits and validation on the real server: body size (413), context length (400 with the
lengths), bounds on sampling fields, hostile JSON, the per-request timeout, and the full queue
(503 with Retry-After). Every refusal leaves the engine idle and the server healthy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from serverproc import COMMON_ARGS, Server, start

MAX_BODY = 256 * 1024
TIMEOUT_S = 0.5  # 500 tiny-model tokens take ~1 s on a fast CPU


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("limits")
    s = start(
        tmp,
        "limits",
        "tiny",
        *COMMON_ARGS,
        "--max-body-size",
        "256KiB",
        "--request-timeout",
        str(TIMEOUT_S),
        "--num-parallel",
        "1",
        "--max-queue",
        "1",
    )
    yield s
    s.stop()


def post(server: Server, path: str, body: Any, **kw: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    return httpx.post(server.url + path, content=content, headers=headers, timeout=60, **kw)


def ollama_error(r: httpx.Response) -> str:
    err = r.json()["error"]
    assert isinstance(err, str)
    return err


def openai_error(r: httpx.Response) -> str:
    err = r.json()["error"]
    assert err["code"] == r.status_code
    return str(err["message"])


def test_body_over_the_limit_is_413(limited: Server) -> None:
    big = "word " * (MAX_BODY // 4)
    r = post(limited, "/api/generate", {"model": "tiny", "prompt": big})
    assert r.status_code == 413 and "--max-body-size" in ollama_error(r)
    r = post(limited, "/v1/completions", {"model": "tiny", "prompt": big})
    assert r.status_code == 413 and str(MAX_BODY) in openai_error(r)

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(MAX_BODY // 1024 + 1):
            yield b"x" * 1024
        yield b'"}'

    r = httpx.post(limited.url + "/api/chat", content=chunks(), timeout=60)
    assert r.status_code == 413


def test_prompt_longer_than_the_context_says_the_lengths(limited: Server) -> None:
    ids = [5] * 600  # the context is 512 tokens
    r = post(limited, "/v1/completions", {"model": "tiny", "prompt": ids, "max_tokens": 1})
    assert r.status_code == 400
    msg = openai_error(r)
    assert "512" in msg and "600" in msg
    long = {"model": "tiny", "prompt": "hi " * 700, "stream": False, "truncate": False}
    r = post(limited, "/api/generate", long)
    assert r.status_code == 400
    msg = ollama_error(r)
    assert "512" in msg and "context length" in msg


def test_ollama_truncates_long_prompts_by_default(limited: Server) -> None:
    opts = {"num_predict": 2}
    gen = {"model": "tiny", "prompt": "hi " * 700, "stream": False, "options": opts}
    r = post(limited, "/api/generate", gen)
    assert r.status_code == 200, r.text
    assert 400 < r.json()["prompt_eval_count"] < 512
    turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "hi " * 40}
        for i in range(41)
    ]
    chat = {"model": "tiny", "stream": False, "options": opts}
    msgs = [{"role": "system", "content": "be brief"}, *turns]
    r = post(limited, "/api/chat", {**chat, "messages": msgs})
    assert r.status_code == 200, r.text
    assert r.json()["prompt_eval_count"] < 512
    r = post(limited, "/api/chat", {**chat, "messages": msgs, "truncate": False})
    assert r.status_code == 400 and "context length" in ollama_error(r)


BAD_OPENAI = {
    "max_tokens too large": {"max_tokens": 10**6},
    "max_tokens negative": {"max_tokens": -3},
    "max_tokens huge": {"max_tokens": 10**40},
    "n": {"n": 10**6},
    "n zero": {"n": 0},
    "logprobs": {"logprobs": 21},
    "too many stops": {"stop": [f"s{i}" for i in range(65)]},
    "stop too long": {"stop": ["x" * 2000]},
    "seed": {"seed": 2**70},
    "top_k": {"top_k": 10**30},
    "temperature": {"temperature": -1},
    "token ids out of the vocabulary": {"prompt": [10**12, -1]},
    "wrong type": {"max_tokens": "many"},
}


@pytest.mark.parametrize("case", sorted(BAD_OPENAI))
def test_out_of_bounds_openai_fields_are_400(limited: Server, case: str) -> None:
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2, **BAD_OPENAI[case]}
    r = post(limited, "/v1/completions", body)
    assert r.status_code == 400, (case, r.text)
    assert openai_error(r)


def test_out_of_bounds_chat_and_ollama_fields_are_400(limited: Server) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    chat = {"model": "tiny", "messages": msgs, "max_tokens": 2}
    r = post(limited, "/v1/chat/completions", {**chat, "logprobs": True, "top_logprobs": 99})
    assert r.status_code == 400
    r = post(limited, "/v1/chat/completions", {**chat, "max_completion_tokens": 10**9})
    assert r.status_code == 400
    gen = {"model": "tiny", "prompt": "hi", "stream": False}
    for options in ({"seed": 2**80}, {"top_k": 10**20}, {"stop": ["s"] * 100}):
        r = post(limited, "/api/generate", {**gen, "options": {"num_predict": 2, **options}})
        assert r.status_code == 400, (options, r.text)
    r = post(limited, "/api/generate", {**gen, "context": [7] * 5000, "truncate": False})
    assert r.status_code == 400 and "512" in ollama_error(r)


def test_huge_num_ctx_is_capped_not_allocated(limited: Server) -> None:
    body = {"model": "tiny", "prompt": "hi", "stream": False}
    r = post(limited, "/api/generate", {**body, "options": {"num_ctx": 2**62, "num_predict": 3}})
    assert r.status_code == 200 and r.json()["eval_count"] <= 3


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "tiny", "prompt": "hi", "options": {"temperature": NaN}}',
        b'{"model": "tiny", "prompt": "hi", "options": {"temperature": Infinity}}',
        b'{"model": "tiny", "prompt": "hi", "max_tokens": ' + b"9" * 5000 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"model": "tiny", "prompt": "\xff\xfe invalid utf-8"}',
        b'{"model": "tiny", "prompt": "\\ud800 lone surrogate", "stream": false}',
        b"",
        b"null",
    ],
)
def test_hostile_json_is_400_never_500(limited: Server, raw: bytes) -> None:
    for path in ("/api/generate", "/v1/completions"):
        r = post(limited, path, raw)
        assert r.status_code in (200, 400), (path, raw[:60], r.text)
    assert httpx.get(limited.url + "/health").status_code == 200


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def test_deeply_nested_tools_are_400_and_keep_the_connection(limited: Server) -> None:
    """Chat templates and schema compilers recurse into tools: a body nested past the limit is
    refused whole (it was a 500 from the template's recursion, which also dropped the client's
    keep-alive connection); a plausible schema still works."""
    with httpx.Client(base_url=limited.url, timeout=60) as client:
        for path, extra in (
            ("/v1/chat/completions", {"max_tokens": 1}),
            ("/api/chat", {"stream": False, "options": {"num_predict": 1}}),
        ):
            tool = {"type": "function", "function": {"name": "f", "parameters": nested(150)}}
            body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **extra}
            r = client.post(path, json={**body, "tools": [tool]})
            assert r.status_code == 400 and "nested more than 100" in r.text, r.text
            tool["function"]["parameters"] = nested(1)  # the context is 512
            assert client.post(path, json={**body, "tools": [tool]}).status_code == 200


def test_keep_alive_must_be_a_number_and_huge_is_forever(limited: Server) -> None:
    body = {"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
    for bad in ("nan", "NaN"):
        r = httpx.post(limited.url + "/api/generate", json={**body, "keep_alive": bad})
        assert r.status_code == 400 and "keep_alive" in r.text
    r = httpx.post(limited.url + "/api/generate", json={**body, "keep_alive": 1e12}, timeout=60)
    assert r.status_code == 200
    ps = httpx.get(limited.url + "/api/ps")
    assert ps.status_code == 200 and ps.json()["models"][0]["expires_at"].startswith("2318")
    r = httpx.post(limited.url + "/api/generate", json={**body, "keep_alive": -1}, timeout=60)
    assert r.status_code == 200


@pytest.fixture(scope="module")
def hurried(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose requests time out long before 500 tiny-model tokens can be generated
    (they take ~1 s on a fast CPU; at `limited`'s 0.5 s a fast quiet machine could finish)."""
    s = start(
        tmp_path_factory.mktemp("hurried"),
        "hurried",
        "tiny",
        *COMMON_ARGS,
        "--request-timeout",
        "0.05",
    )
    yield s
    s.stop()


def test_request_timeout_ends_requests_with_an_error(hurried: Server) -> None:
    body = {"model": "tiny", "prompt": "go", "max_tokens": 500, "ignore_eos": True}
    slow = {"min_tokens": 500}  # at least as long as the context allows
    r = post(hurried, "/v1/completions", {**body, **slow})
    assert r.status_code == 504 and "--request-timeout" in openai_error(r)

    stream = {"model": "tiny", "prompt": "go", "options": {"num_predict": 500, "temperature": 0}}
    with httpx.stream("POST", hurried.url + "/api/generate", json=stream, timeout=60) as resp:
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert not lines[-1].get("done"), "500 tokens finished inside a 0.05 s request timeout"
    assert "--request-timeout" in lines[-1]["error"]


def test_full_queue_is_503_with_retry_after(limited: Server) -> None:
    def one(i: int) -> tuple[int, str]:
        if i % 2:
            path = "/v1/completions"
            body: dict[str, Any] = {"prompt": "busy", "max_tokens": 500, "ignore_eos": True}
        else:
            path = "/api/generate"
            body = {"prompt": "busy", "stream": False, "options": {"num_predict": 500}}
        r = post(limited, path, {"model": "tiny", **body})
        return r.status_code, r.headers.get("retry-after", "")

    with ThreadPoolExecutor(6) as pool:  # num_parallel 1 + max_queue 1
        results = list(pool.map(one, range(6)))
    assert any(status == 503 for status, _ in results), results
    for status, retry_after in results:
        assert status in (200, 503, 504), results
        assert status != 503 or retry_after == "1"
