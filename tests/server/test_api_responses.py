"""POST /v1/responses, driven by the official `openai` client's `responses` API: every reply and
event must parse as the client's own types, and the route must behave as /v1/chat/completions
does underneath (the same prompt, tool calls, constrained decoding, admission and aborts)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter
from serverproc import COMMON_ARGS, Server, aborted, idle, start, wait_for

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "size": {"enum": ["S", "M", "L"]}},
    "required": ["ok", "size"],
    "additionalProperties": False,
}
# Small: the tiny model's template lists tools at length, and its context is 512 tokens.
TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "w",
        "parameters": {
            "type": "object",
            "properties": {"c": {"enum": ["P", "O"]}},
            "required": ["c"],
            "additionalProperties": False,
        },
    }
]
EVENT = TypeAdapter(ResponseStreamEvent)
LONG = {"ignore_eos": True}  # the reply runs to max_output_tokens


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="x", timeout=60, max_retries=0)


def strict(response: Response) -> Response:
    """The response validated against the client's types, not just constructed from them."""
    return Response.model_validate(response.model_dump(mode="json"))


def prompt_tokens(base_url: str, messages: list[Any]) -> int:
    body = {"model": "tiny", "messages": messages}
    return int(httpx.post(base_url + "/tokenize", json=body, timeout=30).json()["count"])


def test_string_input_with_instructions(client: openai.OpenAI, base_url: str) -> None:
    r = strict(
        client.responses.create(
            model="tiny", input="Say hello", instructions="Be brief.", max_output_tokens=6
        )
    )
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "tiny"
    assert r.instructions == "Be brief." and r.max_output_tokens == 6
    assert isinstance(r.output_text, str) and r.status in ("completed", "incomplete")
    assert r.usage is not None and 1 <= r.usage.output_tokens <= 6
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    # instructions are the system message of the chat prompt
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    assert r.usage.input_tokens == prompt_tokens(base_url, chat)


def test_list_input_and_max_output_tokens_incomplete(client: openai.OpenAI, base_url: str) -> None:
    history: list[Any] = [
        {"role": "developer", "content": "Answer in French."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Salut", "annotations": []}],
        },
        {"role": "user", "content": "And again"},
    ]
    r = strict(
        client.responses.create(
            model="tiny", input=history, max_output_tokens=5, temperature=0, extra_body=LONG
        )
    )
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None and r.usage.output_tokens == 5
    [message] = r.output
    assert message.type == "message" and message.status == "incomplete"
    assert r.temperature == 0.0
    chat = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Salut"},
        {"role": "user", "content": "And again"},
    ]
    assert r.usage.input_tokens == prompt_tokens(base_url, chat)


def test_stream_events_in_order_match_the_whole_reply(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = {
        "model": "tiny",
        "input": "Count to ten",
        "max_output_tokens": 8,
        "temperature": 0,
        "extra_body": LONG,
    }
    whole = client.responses.create(**kw)
    events = [
        EVENT.validate_python(e.model_dump(mode="json"))
        for e in client.responses.create(stream=True, **kw)
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[4 : 4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert kinds[4 + len(deltas) :] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    text = "".join(d.delta for d in deltas)
    assert text == whole.output_text
    done = events[-1]
    assert done.type == "response.incomplete"
    assert done.response.output_text == text and done.response.id == events[0].response.id
    assert done.response.usage is not None and done.response.usage.output_tokens == 8


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_text_format(client: openai.OpenAI, stream: bool) -> None:
    kw: dict[str, Any] = {
        "model": "tiny",
        "input": "Describe a box",
        "text": {"format": {"type": "json_schema", "name": "box", "schema": SCHEMA}},
        "max_output_tokens": 64,
        "temperature": 1.0,
        "extra_body": {"seed": 5},
    }
    if stream:
        with client.responses.stream(**kw) as events:
            for _ in events:
                pass
            r = events.get_final_response()
    else:
        r = client.responses.create(**kw)
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), SCHEMA)
    assert r.text is not None and r.text.format is not None
    assert r.text.format.type == "json_schema"


def test_tool_call_round_trip(client: openai.OpenAI, base_url: str) -> None:
    first = strict(
        client.responses.create(
            model="tiny",
            input="Weather?",
            tools=TOOLS,
            tool_choice={"type": "function", "name": "w"},
            extra_body={"seed": 1},
        )
    )
    [call] = first.output
    assert call.type == "function_call" and call.name == "w" and call.status == "completed"
    assert json.loads(call.arguments)["c"] in ("P", "O")
    assert first.tools[0].type == "function" and first.tools[0].name == "w"
    assert first.tool_choice.type == "function"  # type: ignore[union-attr]
    history: list[Any] = [
        {"role": "user", "content": "Weather?"},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]
    second = strict(
        client.responses.create(model="tiny", input=history, max_output_tokens=4, temperature=0)
    )
    assert second.status in ("completed", "incomplete") and second.output
    # The round trip reaches the template as the chat route's tool messages would (tools left
    # out: with them the prompt passes the tiny model's 512-token context).
    chat: list[Any] = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": "w", "arguments": call.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"},
    ]
    assert second.usage is not None
    assert second.usage.input_tokens == prompt_tokens(base_url, chat)


def test_streamed_tool_call_events(client: openai.OpenAI) -> None:
    events = [
        EVENT.validate_python(e.model_dump(mode="json"))
        for e in client.responses.create(
            model="tiny",
            input="Weather?",
            tools=TOOLS,
            tool_choice={"type": "function", "name": "w"},
            stream=True,
            extra_body={"seed": 1},
        )
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = events[-1]
    assert done.type == "response.completed"
    [call] = done.response.output
    assert call.type == "function_call" and call.name == "w"
    assert json.loads(call.arguments)["c"] in ("P", "O")
    args = events[4]
    assert args.type == "response.function_call_arguments.done"
    assert args.arguments == call.arguments and args.item_id == call.id


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict)
    return body


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "built-in"),
        ({"tools": [{"type": "function", "function": {"name": "w"}}]}, "tools[0].name", "flat"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type", "item_reference"),
        ({"input": [{"role": "user"}]}, "input[0].content", "content parts"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
            "input[0].content[0]",
            "text only",
        ),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "role"),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "w", "arguments": "{"}]},
            "input[0].arguments",
            "JSON object",
        ),
        ({"input": []}, "input", "empty"),
        ({"conversation": "conv_1"}, "conversation", "whole conversation"),
        ({"background": True}, "background", "background"),
        ({"n": 2}, "n", "unknown parameter"),
        ({"text": {"format": {"type": "xml"}}}, "text.format", "json_schema"),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"tool_choice": {"type": "web_search"}}, "tool_choice", "unsupported"),
        ({"max_output_tokens": 0}, "max_output_tokens", "at least 1"),
        ({"max_output_tokens": 100000}, "max_output_tokens", "too large"),
        ({"top_logprobs": 2}, "top_logprobs", "chat/completions"),
    ],
)
def test_what_ember_cannot_do_is_a_400_naming_the_field(
    base_url: str, extra: dict[str, Any], param: str, words: str
) -> None:
    body = {"model": "tiny", "input": "hi", "max_output_tokens": 2, **extra}
    r = httpx.post(base_url + "/v1/responses", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err
    assert err["type"] == "BadRequestError" and err["code"] == 400


def test_previous_response_id_is_not_found_as_on_vllm(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="tiny", input="hi", previous_response_id="resp_123")
    err = error_of(e.value)
    assert err["param"] == "previous_response_id" and "whole conversation" in err["message"]
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="hi")


def test_accepted_fields_that_change_nothing(client: openai.OpenAI) -> None:
    r = strict(
        client.responses.create(
            model="tiny",
            input="hi",
            max_output_tokens=2,
            store=True,
            metadata={"k": "v"},
            user="u1",
            reasoning={"effort": "low"},
            truncation="auto",
            include=["reasoning.encrypted_content"],
            prompt_cache_key="abc",
        )
    )
    assert r.metadata == {"k": "v"} and r.user == "u1" and r.truncation == "auto"
    assert r.reasoning is not None and r.reasoning.effort == "low"


def test_stream_disconnect_frees_the_engine(server: Server) -> None:
    assert wait_for(lambda: idle(server))
    before = aborted(server)
    body = {
        "model": "tiny",
        "input": "go on",
        "max_output_tokens": 400,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream("POST", server.url + "/v1/responses", json=body, timeout=60) as r:
        lines = r.iter_lines()
        seen = 0
        for line in lines:
            seen += line.startswith("event: response.output_text.delta")
            if seen == 2:
                break
        busy = server.metrics()
        assert busy["vllm:num_requests_running"] == 1
    assert wait_for(lambda: idle(server) and aborted(server) == before + 1), server.metrics()


def test_auto_tools_stream_as_the_whole_reply(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = {
        "model": "tiny",
        "input": "Hi",
        "tools": TOOLS,
        "max_output_tokens": 6,
        "temperature": 0,
    }
    whole = strict(client.responses.create(**kw))
    events = list(client.responses.create(stream=True, **kw))
    final = events[-1]
    assert final.type in ("response.completed", "response.incomplete")
    assert [i.type for i in final.response.output] == [i.type for i in whole.output]
    assert final.response.output_text == whole.output_text


@pytest.fixture(scope="module")
def hurried(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Requests time out long before 500 tiny-model tokens (~1 s on a fast CPU) are made."""
    tmp = tmp_path_factory.mktemp("hurried")
    s = start(tmp, "hurried", "tiny", *COMMON_ARGS, "--request-timeout", "0.05")
    yield s
    s.stop()


def test_request_timeout_is_a_504_or_an_error_event(hurried: Server) -> None:
    body = {"model": "tiny", "input": "go", "max_output_tokens": 480, "ignore_eos": True}
    r = httpx.post(hurried.url + "/v1/responses", json={**body, "min_tokens": 480}, timeout=60)
    assert r.status_code == 504 and "--request-timeout" in r.json()["error"]["message"]
    with httpx.stream("POST", hurried.url + "/v1/responses", json={**body, "stream": True}) as s:
        assert s.status_code == 200
        events = [e for e in s.read().decode().split("\n\n") if e]
    kind, data = events[-1].split("\n")
    assert kind == "event: error", events[-3:]
    err = EVENT.validate_json(data.removeprefix("data: "))
    assert err.type == "error" and "--request-timeout" in err.message
    assert err.sequence_number == len(events) - 1
