"""Reasoning on POST /v1/responses, on scripted models (see scripted.py) behind one real
`ember serve --reasoning-parser qwen3`: the <think>...</think> of a reply is a `reasoning` item
before the message, as vLLM returns it, streamed as reasoning_text events; the official client
parses every reply and event, and `output_text` is the answer alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter
from scripted import QWEN_OFF, QWEN_OPEN, R1_TEMPLATE, serve_scripted, write_qwen
from serverproc import Server

EVENT = TypeAdapter(ResponseStreamEvent)
ASK = "Hi"
QWEN_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("responses-reasoning")
    models = path / "models"
    write_qwen(
        models / "qwen-think" / "latest",
        {
            QWEN_OPEN: ["<think>", "\nI should greet.\n", "</think>", "\n\nHello there!"],
            QWEN_OFF: ["Hello without thinking."],
        },
    )
    write_qwen(
        models / "qwen-tools" / "latest",
        {QWEN_OPEN: ["<think>", "Need the weather.", "</think>", "\n\n", QWEN_CALL]},
    )
    write_qwen(
        models / "r1" / "latest",
        {QWEN_OPEN + "<think>\n": ["Because.", "</think>", "\n\nAnswer."]},
        R1_TEMPLATE,
    )
    return path


def _serve(home: Path, name: str, *flags: str) -> Server:
    return serve_scripted(home, name, "qwen-think", 3, *flags)


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    s = _serve(home, "reasoning", "--reasoning-parser", "qwen3")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def oai(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", timeout=60, max_retries=0)


def strict(response: Response) -> Response:
    """The response validated against the client's types, not just constructed from them."""
    return Response.model_validate(response.model_dump(mode="json"))


def events(oai: openai.OpenAI, **kw: Any) -> list[Any]:
    stream = oai.responses.create(stream=True, **kw)
    return [EVENT.validate_python(e.model_dump(mode="json")) for e in stream]


def prompt_tokens(server: Server, model: str, messages: list[Any]) -> int:
    body = {"model": model, "messages": messages}
    return int(httpx.post(server.url + "/tokenize", json=body, timeout=30).json()["count"])


def test_reasoning_item_before_the_message(oai: openai.OpenAI, server: Server) -> None:
    r = strict(oai.responses.create(model="qwen-think", input=ASK))
    assert [i.type for i in r.output] == ["reasoning", "message"]
    thought = r.output[0]
    assert thought.type == "reasoning" and thought.id.startswith("rs_")
    assert thought.summary == [] and thought.status == "completed"
    assert [(c.type, c.text) for c in thought.content or []] == [
        ("reasoning_text", "\nI should greet.\n")
    ]
    assert r.output_text == "\n\nHello there!"  # the answer alone, as the model wrote it
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens == 1
    # the same split as the chat route's
    body = {"model": "qwen-think", "messages": [{"role": "user", "content": ASK}]}
    chat = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).json()
    msg = chat["choices"][0]["message"]
    assert (msg["reasoning"], msg["content"]) == (thought.content[0].text, r.output_text)  # type: ignore[index]


def test_stream_events_in_order(oai: openai.OpenAI) -> None:
    got = events(oai, model="qwen-think", input=ASK)
    assert [e.sequence_number for e in got] == list(range(len(got)))
    kinds = [e.type for e in got]
    thinking = kinds.count("response.reasoning_text.delta")
    texting = kinds.count("response.output_text.delta")
    assert thinking >= 1 and texting >= 1
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.reasoning_text.delta"] * thinking,
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * texting,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    added, done = got[2], got[4 + thinking + 2]
    assert added.item.type == done.item.type == "reasoning" and added.output_index == 0
    assert added.item.id == done.item.id and done.item.status == "completed"
    deltas = "".join(e.delta for e in got if e.type == "response.reasoning_text.delta")
    assert deltas == got[4 + thinking].text == "\nI should greet.\n"
    message = got[4 + thinking + 3]
    assert message.item.type == "message" and message.output_index == 1
    final = got[-1].response
    assert [i.type for i in final.output] == ["reasoning", "message"]
    assert final.output[0].id == added.item.id and final.output_text == "\n\nHello there!"
    assert final.usage.output_tokens_details.reasoning_tokens == 1
    # the client's own accumulator takes the stream too
    with oai.responses.stream(model="qwen-think", input=ASK) as stream:
        for _ in stream:
            pass
        whole = stream.get_final_response()
    assert whole.output_text == "\n\nHello there!"


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_then_a_tool_call(oai: openai.OpenAI, stream: bool) -> None:
    kw: dict[str, Any] = {"model": "qwen-tools", "input": "Weather in Paris?", "tools": TOOLS}
    if stream:
        got = events(oai, **kw)
        assert [e.sequence_number for e in got] == list(range(len(got)))
        r = got[-1].response
        added = [
            (e.output_index, e.item.type) for e in got if e.type == "response.output_item.added"
        ]
        assert added == [(0, "reasoning"), (1, "function_call")]
    else:
        r = strict(oai.responses.create(**kw))
    assert [i.type for i in r.output] == ["reasoning", "function_call"]
    assert r.output[0].content[0].text == "Need the weather."
    call = r.output[1]
    assert call.name == "get_weather" and call.arguments == '{"city": "Paris"}'
    assert r.output_text == ""


@pytest.mark.parametrize(
    "off",
    [
        {"reasoning": {"effort": "none"}},
        {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}},
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_thinking_turned_off(oai: openai.OpenAI, off: dict[str, Any], stream: bool) -> None:
    """reasoning.effort "none" turns Qwen3's thinking off, as Ollama maps it to think=false."""
    kw: dict[str, Any] = {"model": "qwen-think", "input": ASK, **off}
    if stream:
        got = events(oai, **kw)
        assert not [e for e in got if "reasoning" in e.type]
        r = got[-1].response
    else:
        r = strict(oai.responses.create(**kw))
    assert [i.type for i in r.output] == ["message"]
    assert r.output_text == "Hello without thinking."
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens == 0
    if "reasoning" in off:
        assert r.reasoning is not None and r.reasoning.effort == "none"


def test_effort_other_than_none_keeps_thinking(oai: openai.OpenAI) -> None:
    r = strict(oai.responses.create(model="qwen-think", input=ASK, reasoning={"effort": "low"}))
    assert [i.type for i in r.output] == ["reasoning", "message"]
    assert r.reasoning is not None and r.reasoning.effort == "low"


def test_prompt_opens_the_thinking(oai: openai.OpenAI) -> None:
    """DeepSeek-R1 style: the reply only closes the thinking; cut short inside it, the reasoning
    item is incomplete and the message empty."""
    r = strict(oai.responses.create(model="r1", input=ASK))
    assert r.output[0].content[0].text == "Because."  # type: ignore[union-attr]
    assert r.output_text == "\n\nAnswer."
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens == 1
    cut = strict(oai.responses.create(model="r1", input=ASK, max_output_tokens=1))
    assert cut.status == "incomplete" and cut.output_text == ""
    thought = cut.output[0]
    assert thought.type == "reasoning" and thought.status == "incomplete"
    assert cut.usage is not None and cut.usage.output_tokens_details.reasoning_tokens == 1


def test_reasoning_items_sent_back_reach_the_template(oai: openai.OpenAI, server: Server) -> None:
    """The earlier turn's reasoning item becomes its assistant message's reasoning_content: the
    prompt is the chat route's for those messages."""
    first = strict(oai.responses.create(model="qwen-think", input=ASK))
    answer, thought = first.output_text, first.output[0].content[0].text  # type: ignore[union-attr]
    history: list[Any] = [
        {"role": "user", "content": ASK},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"role": "user", "content": "Again?"},
    ]
    second = strict(oai.responses.create(model="qwen-think", input=history))
    assert second.output_text == "\n\nHello there!"
    chat = [
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": answer, "reasoning_content": thought},
        {"role": "user", "content": "Again?"},
    ]
    assert second.usage is not None
    assert second.usage.input_tokens == prompt_tokens(server, "qwen-think", chat)
    without = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in chat]
    assert second.usage.input_tokens > prompt_tokens(server, "qwen-think", without)
    # vLLM's example sends back the reasoning item alone: a turn of reasoning only
    alone = [history[0], history[1]]
    r = strict(oai.responses.create(model="qwen-think", input=alone))
    chat = [chat[0], {"role": "assistant", "content": "", "reasoning_content": thought}]
    assert r.usage is not None
    assert r.usage.input_tokens == prompt_tokens(server, "qwen-think", chat)


def test_encrypted_reasoning_is_a_400(oai: openai.OpenAI) -> None:
    item = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA"}
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model="qwen-think", input=[{"role": "user", "content": ASK}, item])
    body = e.value.body
    assert isinstance(body, dict) and body["param"] == "input[1].encrypted_content"


def test_without_the_flag_nothing_changes(home: Path) -> None:
    s = _serve(home, "plain")
    try:
        oai = openai.OpenAI(base_url=s.url + "/v1", api_key="x", timeout=60, max_retries=0)
        r = strict(oai.responses.create(model="qwen-think", input=ASK))
        got = events(oai, model="qwen-think", input=ASK)
    finally:
        s.stop()
    whole = "<think>\nI should greet.\n</think>\n\nHello there!"
    assert [i.type for i in r.output] == ["message"] and r.output_text == whole
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens == 0
    assert not [e for e in got if "reasoning" in e.type]
    assert got[-1].response.output_text == whole
