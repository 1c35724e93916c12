"""A Responses request as the chat request it runs: input items as chat messages, flat tools
as chat's nested ones, text.format as response_format."""

from __future__ import annotations

from typing import Any

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
