"""A Responses request as the chat request it runs: input items (reasoning items too) as chat
messages, flat tools as chat's nested ones, text.format as response_format, reasoning.effort
as template kwargs."""

from __future__ import annotations

from typing import Any

import pytest

from ember.errors import InvalidRequestError
from ember.server.protocol_responses import ResponsesRequest


def test_a_turn_of_text_and_calls_is_one_assistant_message() -> None:
    items: list[Any] = [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
        },
        {"type": "function_call", "call_id": "c1", "name": "w", "arguments": '{"c": "P"}'},
        {"type": "function_call", "call_id": "c2", "name": "w", "arguments": '{"c": "O"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {
            "type": "function_call_output",
            "call_id": "c2",
            "output": [{"type": "input_text", "text": "rain"}],
        },
    ]
    chat = ResponsesRequest.model_validate({"input": items, "instructions": "Be brief."}).to_chat()
    messages = [m.for_template() for m in chat.messages]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool"]
    turn = messages[2]
    assert turn["content"] == "Checking."
    assert [c["id"] for c in turn["tool_calls"]] == ["c1", "c2"]
    assert turn["tool_calls"][1]["function"] == {"name": "w", "arguments": {"c": "O"}}
    assert messages[4] == {"role": "tool", "tool_call_id": "c2", "content": "rain"}


def test_flat_tools_named_choice_and_json_schema_become_chat_fields() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = {
        "model": "tiny",
        "input": "hi",
        "tools": [{"type": "function", "name": "w", "parameters": schema, "strict": True}],
        "tool_choice": {"type": "function", "name": "w"},
        "text": {"format": {"type": "json_schema", "name": "r", "schema": schema}},
        "max_output_tokens": 7,
        "seed": 3,
    }
    chat = ResponsesRequest.model_validate(body).to_chat()
    assert chat.tools == [
        {"type": "function", "function": {"name": "w", "parameters": schema, "strict": True}}
    ]
    assert chat.forced_tool == "w" and chat.requested_max_tokens == 7 and chat.seed == 3
    assert chat.response_format == {
        "type": "json_schema",
        "json_schema": {"name": "r", "schema": schema},
    }


def _chat_messages(items: list[Any], **body: Any) -> list[dict[str, Any]]:
    chat = ResponsesRequest.model_validate({"input": items, **body}).to_chat()
    return [m.for_template() for m in chat.messages]


def _thought(text: str, **extra: Any) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}]
    return {"type": "reasoning", "id": "rs_1", "summary": [], "content": content, **extra}


def _said(text: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}]
    return {"type": "message", "role": "assistant", "content": content}


def test_reasoning_items_are_the_reasoning_of_their_assistant_turn() -> None:
    """As vLLM builds the chat messages: the reasoning item opens the turn, the message and
    calls after it join that turn."""
    ask = {"role": "user", "content": "Hi"}
    call = {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"}
    turn, *_ = _chat_messages([ask, _thought("Greet."), _said("Hello!")])[1:]
    assert (turn["role"], turn["content"], turn["reasoning_content"]) == (
        "assistant",
        "Hello!",
        "Greet.",
    )
    [turn] = _chat_messages([ask, _thought("Need w."), call])[1:]
    assert turn["reasoning_content"] == "Need w." and turn["tool_calls"][0]["id"] == "c1"
    assert turn["content"] == ""
    # vLLM's own example sends back only the reasoning item: a turn of reasoning alone
    [turn] = _chat_messages([ask, _thought("Greet.")])[1:]
    assert (turn["content"], turn["reasoning_content"]) == ("", "Greet.")
    # after the turn's text: its reasoning, unless it has some
    said = _chat_messages([ask, _said("Hello!"), _thought("Greet."), _thought("More.")])
    assert [m["role"] for m in said] == ["user", "assistant", "assistant"]
    assert said[1]["reasoning_content"] == "Greet." and said[2]["reasoning_content"] == "More."
    # a summary stands in for content that is missing, as in vLLM
    summary = [{"type": "summary_text", "text": "Short."}]
    [turn] = _chat_messages([ask, {"type": "reasoning", "id": "rs_2", "summary": summary}])[1:]
    assert turn["reasoning_content"] == "Short."


@pytest.mark.parametrize(
    ("item", "param"),
    [
        (_thought("x", encrypted_content="gAAA"), "input[1].encrypted_content"),
        ({"type": "reasoning", "summary": [], "content": [{"type": "x"}]}, "input[1].content[0]"),
        ({"type": "reasoning", "summary": "x"}, "input[1].summary"),
    ],
)
def test_reasoning_items_ember_cannot_read_are_a_400(item: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as e:
        _chat_messages([{"role": "user", "content": "Hi"}, item])
    assert e.value.param == param


def test_reasoning_effort_reaches_the_template() -> None:
    """As vLLM: the template sees reasoning_effort; "none" turns thinking off as Ollama does."""

    def kwargs(**body: Any) -> dict[str, Any] | None:
        return ResponsesRequest.model_validate({"input": "hi", **body}).to_chat().template_kwargs

    assert kwargs() is None
    assert kwargs(reasoning={"effort": "low"}) == {"reasoning_effort": "low"}
    off = {"reasoning_effort": "none", "enable_thinking": False}
    assert kwargs(reasoning={"effort": "none"}) == off
    mine = {"enable_thinking": True, "x": 1}
    assert kwargs(reasoning={"effort": "none"}, chat_template_kwargs=mine) == {**off, **mine}
    assert kwargs(chat_template_kwargs={"enable_thinking": False}) == {"enable_thinking": False}
