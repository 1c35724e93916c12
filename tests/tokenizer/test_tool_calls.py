"""Tool calls parsed from model output in the Hermes/Qwen, Llama 3.x and Mistral formats."""

from __future__ import annotations

import re

import pytest

from ember.tokenizer.tool_calls import (
    ParsedOutput,
    ToolCall,
    ToolCallGate,
    calls_from_json,
    new_call_id,
    parse_tool_calls,
    read_reply,
    tool_call_schema,
)


def test_hermes_blocks() -> None:
    text = 'Let me check.\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>\n<tool_call>{"name": "g", "arguments": "{\\"y\\": 2}"}</tool_call>'
    parsed = parse_tool_calls(text)
    assert parsed.content == "Let me check."
    assert parsed.tool_calls == [ToolCall("f", {"x": 1}), ToolCall("g", {"y": 2})]


def test_llama3_json_and_python_tag() -> None:
    parsed = parse_tool_calls(
        '<|python_tag|>{"name": "f", "parameters": {"x": "a"}}; {"name": "g", "parameters": {}}'
    )
    assert parsed.content == "" and [c.name for c in parsed.tool_calls] == ["f", "g"]
    assert parse_tool_calls(' {"name": "f", "parameters": {"x": 1}}').tool_calls == [
        ToolCall("f", {"x": 1})
    ]


def test_plain_text_and_malformed_calls_stay_content() -> None:
    for text in (
        "hello",
        '{"a": 1}',
        '{"name": "f", "parameters": {}} trailing',
        "<tool_call>{not json</tool_call>",
    ):
        parsed = parse_tool_calls(text)
        assert parsed.tool_calls == [] and parsed.content == text


def test_forced_call_schema_round_trip() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    schema = tool_call_schema(tools, None)
    assert schema["type"] == "array" and schema["minItems"] == 1
    assert tool_call_schema(tools, "f") == {"type": "object"}
    assert calls_from_json('[{"name": "f", "parameters": {"k": 2}}]', None) == [
        ToolCall("f", {"k": 2})
    ]
    assert calls_from_json('{"k": 2}', "f") == [ToolCall("f", {"k": 2})]


def test_gate_streams_text_and_holds_calls() -> None:
    from ember.tokenizer.tool_calls import ToolCallGate

    gate = ToolCallGate()
    assert [gate.feed(p) for p in [" ", "Hel", "lo"]] == ["", " Hel", "lo"] and gate.mode == "text"
    gate = ToolCallGate()
    assert [gate.feed(p) for p in ["<tool", "_call>{", '"name"']] == ["", "", ""]
    assert gate.mode == "call" and gate.held() == '<tool_call>{"name"'


def test_gate_keeps_watching_text_for_a_call_tag() -> None:
    from ember.tokenizer.tool_calls import ToolCallGate

    gate = ToolCallGate()
    pieces = ["Let me ", "check. <tool", "_call>", '{"name": "f"}', "</tool_call>"]
    assert [gate.feed(p) for p in pieces] == ["Let me", " check.", "", "", ""]
    assert gate.mode == "text" and gate.held() == ' <tool_call>{"name": "f"}</tool_call>'
    gate = ToolCallGate()
    assert [gate.feed(p) for p in ["a <", "b> <|py", "thon_tag|>{"]] == ["a", " <b>", ""]
    assert gate.held() == " <|python_tag|>{"
    gate = ToolCallGate()  # a partial tag that turns out to be text is let through
    assert [gate.feed(p) for p in ["x <tool", "box> y"]] == ["x", " <toolbox> y"]


def test_text_then_python_tag_call() -> None:
    parsed = parse_tool_calls('Checking. <|python_tag|>{"name": "f", "parameters": {"x": 1}}')
    assert parsed.content == "Checking." and parsed.tool_calls == [ToolCall("f", {"x": 1})]
    text = "a <|python_tag|> not a call"
    assert parse_tool_calls(text) == ParsedOutput(text, [])


def test_bare_json_is_a_call_only_with_arguments_to_an_offered_tool() -> None:
    """A reply that is just JSON may be the answer itself: a call needs "parameters" (or
    "arguments") and, given the offered tools, one of their names."""
    person = '{"name": "Bob", "age": 3}'
    assert parse_tool_calls(person).tool_calls == []
    assert parse_tool_calls(person).content == person
    call = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert [c.name for c in parse_tool_calls(call, {"get_weather"}).tool_calls] == ["get_weather"]
    assert parse_tool_calls(call, {"other"}).tool_calls == []
    tagged = '<|python_tag|>{"name": "brave_search", "arguments": {"query": "x"}}'
    assert [c.name for c in parse_tool_calls(tagged, {"other"}).tool_calls] == ["brave_search"]


def test_mistral_v3_array_with_content_before() -> None:
    text = 'Let me check. [TOOL_CALLS] [{"name": "f", "arguments": {"x": 1}, "id": "abcDEF123"}, {"name": "g", "arguments": "{}"}]'
    parsed = parse_tool_calls(text)
    assert parsed.content == "Let me check."
    assert parsed.tool_calls == [ToolCall("f", {"x": 1}, "abcDEF123"), ToolCall("g", {})]


def test_mistral_v11_name_args_calls() -> None:
    text = '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]g[CALL_ID]a1b2c3d4e[ARGS]{}'
    parsed = parse_tool_calls(text)
    assert parsed.content == ""
    assert parsed.tool_calls == [
        ToolCall("get_weather", {"city": "Paris"}),
        ToolCall("g", {}, "a1b2c3d4e"),
    ]
    assert parse_tool_calls('Hm.[TOOL_CALLS]f{"a": 1}').tool_calls == [ToolCall("f", {"a": 1})]


@pytest.mark.parametrize(
    "text", ["[TOOL_CALLS] nope", '[TOOL_CALLS][{"name": 3}]', "[TOOL_CALLS]f[ARGS]{bad"]
)
def test_malformed_mistral_calls_stay_content(text: str) -> None:
    assert parse_tool_calls(text) == ParsedOutput(text, [])


def test_mistral_ids_are_nine_alphanumerics() -> None:
    ids = {new_call_id(mistral=True) for _ in range(50)}
    assert len(ids) == 50 and all(re.fullmatch(r"[A-Za-z0-9]{9}", i) for i in ids)
    assert new_call_id().startswith("chatcmpl-tool-")


def test_gate_holds_a_mistral_call_after_text() -> None:
    gate = ToolCallGate()
    streamed = "".join(gate.feed(p) for p in ["Sure", ", one sec. [TOOL", "_CALLS] [{", '"name"'])
    assert streamed == "Sure, one sec." and gate.held().startswith(" [TOOL_CALLS]")
    gate = ToolCallGate()
    assert gate.feed("[TOOL_") == "" and gate.feed("CALLS][") == "" and gate.mode == "call"


def test_read_reply_is_one_reading_for_every_tool_mode() -> None:
    """The chat, Responses and Anthropic routes read a whole reply through read_reply."""
    names = frozenset({"f"})
    hermes = 'Sure.<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>'
    assert read_reply(hermes, "auto", None, names) == ParsedOutput(
        "Sure.", [ToolCall("f", {"x": 1})]
    )
    assert read_reply(hermes, "none", None, names) == ParsedOutput(hermes, [])
    assert read_reply("plain", "auto", None, names) == ParsedOutput("plain", [])
    forced = '[{"name": "f", "parameters": {"x": 2}}]'
    assert read_reply(forced, "required", None, names).tool_calls == [ToolCall("f", {"x": 2})]
    assert read_reply('{"x": 3}', "named", "f", names) == ParsedOutput(
        "", [ToolCall("f", {"x": 3})]
    )
    # Cut short by max_tokens, or not an object: no call, the text stays content.
    assert read_reply('[{"name": "f", "param', "required", None, names) == ParsedOutput(
        '[{"name": "f", "param', []
    )
    assert read_reply("[1, 2]", "named", "f", names) == ParsedOutput("[1, 2]", [])
