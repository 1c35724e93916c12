"""Ollama's API, driven by the official `ollama` client and by raw HTTP."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import ollama
import pytest

CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")
GREEDY = {"temperature": 0, "num_predict": 8}


@pytest.fixture(scope="module")
def client(base_url: str) -> ollama.Client:
    return ollama.Client(host=base_url, timeout=60)


def check_final(r: ollama.GenerateResponse | ollama.ChatResponse) -> None:
    assert r.done is True
    assert r.done_reason in ("stop", "length")
    assert r.created_at is not None and CREATED_AT.match(r.created_at)
    for name in DURATIONS:
        assert isinstance(getattr(r, name), int), name
    assert r.total_duration is not None and r.total_duration > 0
    assert isinstance(r.prompt_eval_count, int) and r.prompt_eval_count > 0
    assert isinstance(r.eval_count, int) and 1 <= r.eval_count <= 8
    if r.done_reason == "length":
        assert r.eval_count == 8


def test_root_and_version(base_url: str) -> None:
    r = httpx.get(base_url + "/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert httpx.head(base_url + "/").status_code == 200
    assert isinstance(httpx.get(base_url + "/api/version").json()["version"], str)


def test_generate_non_streaming(client: ollama.Client) -> None:
    r = client.generate(model="tiny", prompt="Why is the sky blue?", options=GREEDY)
    check_final(r)
    assert r.model == "tiny"
    assert isinstance(r.response, str) and r.response
    assert r.context and all(isinstance(t, int) for t in r.context)
    assert len(r.context) == (r.prompt_eval_count or 0) + (r.eval_count or 0)


def test_generate_streaming_matches_non_streaming(client: ollama.Client) -> None:
    whole = client.generate(model="tiny:latest", prompt="Count to ten", options=GREEDY)
    chunks = list(
        client.generate(model="tiny:latest", prompt="Count to ten", options=GREEDY, stream=True)
    )
    assert all(c.done is False and isinstance(c.response, str) for c in chunks[:-1])
    assert all(CREATED_AT.match(c.created_at or "") for c in chunks)
    check_final(chunks[-1])
    assert chunks[-1].response == ""
    assert "".join(c.response or "" for c in chunks) == whole.response


def test_generate_raw_has_no_context(client: ollama.Client) -> None:
    r = client.generate(model="tiny", prompt="raw text", raw=True, options=GREEDY)
    check_final(r)
    assert r.context is None


def test_generate_with_system_prompt(client: ollama.Client) -> None:
    plain = client.generate(model="tiny", prompt="hello", options=GREEDY)
    with_system = client.generate(model="tiny", prompt="hello", system="Be brief.", options=GREEDY)
    assert with_system.prompt_eval_count is not None and plain.prompt_eval_count is not None
    assert with_system.prompt_eval_count > plain.prompt_eval_count


def test_empty_prompt_loads_the_model(client: ollama.Client) -> None:
    r = client.generate(model="tiny", prompt="")
    assert r.done is True and r.done_reason == "load" and r.response == ""
    c = client.chat(model="tiny", messages=[])
    assert c.done is True and c.done_reason == "load" and c.message.role == "assistant"


def test_chat_non_streaming_and_streaming(client: ollama.Client) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi there"},
    ]
    whole = client.chat(model="tiny", messages=messages, options=GREEDY)
    check_final(whole)
    assert whole.message.role == "assistant" and whole.message.content
    chunks = list(client.chat(model="tiny", messages=messages, options=GREEDY, stream=True))
    assert all(c.message.role == "assistant" and not c.done for c in chunks[:-1])
    check_final(chunks[-1])
    assert "".join(c.message.content or "" for c in chunks) == whole.message.content


def test_num_predict_and_stop(client: ollama.Client) -> None:
    r = client.generate(model="tiny", prompt="a b c", options={"num_predict": 3, "temperature": 0})
    assert r.eval_count is not None and r.eval_count <= 3
    full = client.generate(
        model="tiny", prompt="a b c", options={"num_predict": 12, "temperature": 0}
    )
    text = full.response or ""
    if len(text) > 4:  # stop at a string the greedy output is known to contain
        stop = text[2:4]
        cut = client.generate(
            model="tiny",
            prompt="a b c",
            options={"num_predict": 12, "temperature": 0, "stop": [stop]},
        )
        assert cut.done_reason == "stop"
        assert stop not in (cut.response or "")
        assert text.startswith(cut.response or "")


def test_seed_makes_sampling_reproducible(client: ollama.Client) -> None:
    opts = {"temperature": 1.0, "seed": 1234, "num_predict": 8}
    a = client.generate(model="tiny", prompt="Once upon a time", options=opts)
    b = client.generate(model="tiny", prompt="Once upon a time", options=opts)
    assert a.response == b.response


def test_tags_and_ps(client: ollama.Client, base_url: str) -> None:
    names = [m.model for m in client.list().models]
    assert "tiny:latest" in names
    raw = httpx.get(base_url + "/api/tags").json()["models"]
    tiny = next(m for m in raw if m["name"] == "tiny:latest")
    assert {"name", "model", "modified_at", "size", "digest", "details"} <= tiny.keys()
    running = client.ps().models
    assert [m.model for m in running] == ["tiny:latest"]
    assert running[0].context_length == 512


def test_show(client: ollama.Client) -> None:
    r = client.show("tiny")
    assert r.details is not None and r.details.family == "llama"
    assert (
        r.modelinfo is not None and r.modelinfo["llama.context_length"] == 4096
    )  # trained; ps: served
    assert r.capabilities is not None and "completion" in r.capabilities
    assert r.parameters is not None and "num_predict" in r.parameters
    assert isinstance(r.template, str) and r.template


def test_unknown_model_is_404(client: ollama.Client, base_url: str) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="nope", prompt="hi")
    assert e.value.status_code == 404
    assert e.value.error == "model 'nope' not found"
    r = httpx.post(base_url + "/api/chat", json={"model": "nope:7b", "messages": []})
    assert r.status_code == 404 and r.json() == {"error": "model 'nope:7b' not found"}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "invalid JSON"),
        (b"", "missing request body"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"prompt": "hi"}).encode(), "model is required"),
        (
            json.dumps(
                {"model": "tiny", "prompt": "x", "options": {"temperature": "hot"}}
            ).encode(),
            "'options.temperature'",
        ),
        (json.dumps({"model": "tiny", "prompt": "x", "options": {"top_p": 7}}).encode(), "top_p"),
        (json.dumps({"model": "tiny", "prompt": ["x"]}).encode(), "prompt"),
        (json.dumps({"model": "tiny", "prompt": "x", "format": True}).encode(), "'format':"),
        (
            json.dumps({"model": "tiny", "prompt": "x", "options": {"stop": [1]}}).encode(),
            "'options.stop.0':",
        ),
    ],
)
def test_bad_requests_are_400_naming_the_problem(base_url: str, body: bytes, needle: str) -> None:
    r = httpx.post(base_url + "/api/generate", content=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert isinstance(err, str) and needle in err


def test_raw_http_stream_is_ndjson_even_for_form_encoded_bodies(base_url: str) -> None:
    body = json.dumps({"model": "tiny", "prompt": "hi", "options": GREEDY})
    headers = {"content-type": "application/x-www-form-urlencoded"}  # what `curl -d` sends
    with httpx.stream("POST", base_url + "/api/generate", content=body, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] is True and all(not x["done"] for x in lines[:-1])
    assert set(lines[0]) == {"model", "created_at", "response", "done"}


def test_context_round_trip_has_one_bos(client: ollama.Client) -> None:
    a = client.generate(model="tiny", prompt="hello", options=GREEDY)
    assert a.context is not None
    b = client.generate(model="tiny", prompt="again", context=a.context, options=GREEDY)
    assert b.context is not None and b.prompt_eval_count is not None
    new_prompt = b.context[len(a.context) : b.prompt_eval_count]
    assert new_prompt and a.context[0] not in new_prompt  # context[0] is the BOS


@pytest.mark.parametrize(
    "extra", [{"system": "sys"}, {"template": "{{ .Prompt }}"}, {"context": [1, 2]}]
)
def test_raw_with_system_template_or_context_is_400(base_url: str, extra: dict[str, Any]) -> None:
    body = {"model": "tiny", "prompt": "x", "raw": True, "stream": False, **extra}
    r = httpx.post(base_url + "/api/generate", json=body)
    assert r.status_code == 400
    assert "raw mode does not support template, system, or context" in r.json()["error"]


def test_empty_prompt_loads_whatever_else_is_sent(client: ollama.Client) -> None:
    for extra in ({"system": "sys only"}, {"context": [1, 2, 3]}, {"suffix": "end"}):
        r = client.generate(model="tiny", prompt="", options=GREEDY, **extra)
        assert r.done_reason == "load" and r.response == "" and not r.eval_count


def test_over_long_prompts_are_cut_to_leave_room_for_num_predict(client: ollama.Client) -> None:
    long = "hello world " * 400  # well over the 512-token context
    r = client.generate(model="tiny", prompt=long, options=GREEDY)
    assert r.prompt_eval_count == 512 - 8
    c = client.chat(
        model="tiny",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": long}],
        options=GREEDY,
    )
    assert c.prompt_eval_count == 512 - 8


def test_truncate_false_keeps_the_clear_400(base_url: str) -> None:
    messages = [{"role": "user", "content": "hello world " * 400}]
    body = {"model": "tiny", "messages": messages, "truncate": False, "stream": False}
    r = httpx.post(base_url + "/api/chat", json=body)
    assert r.status_code == 400 and "context length is 512" in r.json()["error"]


def test_num_ctx_bounds_prompt_and_reply(client: ollama.Client) -> None:
    prompt = "hello " * 50
    r = client.generate(model="tiny", prompt=prompt, options={**GREEDY, "num_ctx": 32})
    assert r.prompt_eval_count == 32 - 8 and r.eval_count is not None and r.eval_count <= 8
    r = client.generate(model="tiny", prompt=prompt, options={"temperature": 0, "num_ctx": 32})
    assert r.prompt_eval_count is not None and r.eval_count is not None
    assert r.prompt_eval_count + r.eval_count <= 32


def test_fully_qualified_names_resolve(client: ollama.Client) -> None:
    r = client.generate(model="registry.ollama.ai/library/tiny:latest", prompt="hi", options=GREEDY)
    assert r.done and r.eval_count


def test_one_token_has_a_real_eval_duration(client: ollama.Client) -> None:
    r = client.generate(model="tiny", prompt="hi", options={"temperature": 0, "num_predict": 1})
    assert r.eval_count == 1 and r.eval_duration is not None and r.eval_duration > 1000


def test_any_negative_top_k_is_off_as_in_ollama(base_url: str) -> None:
    body = {"model": "tiny", "prompt": "x", "stream": False}
    body["options"] = {"top_k": -5, "num_predict": 2, "seed": 3}
    r = httpx.post(base_url + "/api/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
