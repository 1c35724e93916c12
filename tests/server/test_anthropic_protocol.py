"""Anthropic Messages requests turned into the chat request (protocol_anthropic.py), replies
shaped into content blocks and stream events (anthropic_output.py), and Anthropic's error
bodies; no server. Events and bodies are checked against the official `anthropic` client's
types and its own stream accumulator."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from ember.errors import InvalidRequestError
from ember.server.anthropic_messages import _fit, _Shape
from ember.server.anthropic_output import Events, MessageHead, Reply, ToolUse, Usage
from ember.server.errors import error_response
from ember.server.protocol_anthropic import Converted, MessagesRequest

EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
TOOL = {"name": "w", "description": "Weather", "input_schema": {"type": "object"}}


def convert(count_only: bool = False, **body: Any) -> Converted:
    body.setdefault("max_tokens", 16)
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return MessagesRequest.model_validate(body).convert(count_only)


def messages(**body: Any) -> list[dict[str, Any]]:
    return [m.for_template() for m in convert(**body).chat.messages]


def refused(**body: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as e:
        convert(**body)
    return e.value


def test_system_as_a_string_or_text_blocks() -> None:
    blocks = [
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Be kind."},
    ]
    assert messages(system="Be brief.")[0] == {"role": "system", "content": "Be brief."}
    assert messages(system=blocks)[0] == {"role": "system", "content": "Be brief.\nBe kind."}
    assert messages(system="")[0]["role"] == "user"


def test_a_tool_round_trip_becomes_chat_tool_messages() -> None:
    history = [
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Need it.", "signature": ""},
                {"type": "redacted_thinking", "data": "xyz"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"c": "P"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "no"}],
                    "is_error": True,
                },
                {"type": "text", "text": "Thanks", "cache_control": {"type": "ephemeral"}},
            ],
        },
    ]
    out = messages(messages=history, tools=[TOOL])
    assert out == [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "reasoning_content": "Need it.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "w", "arguments": {"c": "P"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no"},
        {"role": "user", "content": "Thanks"},
    ]


def test_tools_and_tool_choice_map_to_chat() -> None:
    chat = convert(tools=[TOOL]).chat
    assert chat.tools == [
        {
            "type": "function",
            "function": {"name": "w", "parameters": {"type": "object"}, "description": "Weather"},
        }
    ]
    assert chat.tool_mode == "auto"
    assert convert(tools=[TOOL], tool_choice={"type": "any"}).chat.tool_mode == "required"
    assert convert(tools=[TOOL], tool_choice={"type": "none"}).chat.tool_mode == "none"
    named = convert(tools=[TOOL], tool_choice={"type": "tool", "name": "w"}).chat
    assert named.tool_mode == "named" and named.forced_tool == "w"
    single = convert(tools=[TOOL], tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert single.chat.parallel_tool_calls is False
    assert convert(tool_choice={"type": "auto"}).chat.tool_mode == "none"  # no tools


def test_sampling_stop_sequences_and_thinking() -> None:
    conv = convert(
        temperature=0.2,
        top_p=0.9,
        top_k=5,
        stop_sequences=["END"],
        thinking={"type": "enabled", "budget_tokens": 1024},
        metadata={"user_id": "u"},
        service_tier="auto",
        anything_new={"a": 1},  # beta fields Claude Code may send: ignored
        seed=7,  # vLLM's sampling extras, as on the OpenAI routes
        ignore_eos=True,
        guided_regex="a+",  # but not guided decoding
    )
    params = conv.chat.sampling_params(16, None)
    assert params.seed == 7 and params.ignore_eos and params.structured is None
    assert (params.temperature, params.top_p, params.top_k) == (0.2, 0.9, 5)
    assert params.stop == ["END"] and conv.stop_sequences == ["END"]
    assert conv.think is True and conv.chat.chat_template_kwargs == {"enable_thinking": True}
    off = convert(thinking={"type": "disabled"})
    assert off.think is False and off.chat.chat_template_kwargs == {"enable_thinking": False}
    adaptive = convert(thinking={"type": "adaptive"})
    assert adaptive.think is None and adaptive.chat.chat_template_kwargs is None


def test_a_last_assistant_turn_is_continued() -> None:
    history = [
        {"role": "user", "content": "Pick A or B"},
        {"role": "assistant", "content": "The answer is ("},
    ]
    chat = convert(messages=history).chat
    assert chat.continue_final_message and not chat.add_generation_prompt
    assert not convert().chat.continue_final_message


def test_count_tokens_needs_no_max_tokens() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert MessagesRequest.model_validate(body).convert(count_only=True).chat.messages
    with pytest.raises(InvalidRequestError) as e:
        MessagesRequest.model_validate(body).convert()
    assert e.value.param == "max_tokens" and "required" in e.value.message


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"max_tokens": 0}, "max_tokens", "at least 1"),
        ({"messages": []}, "messages", "at least one"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role", "system field"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "messages[0].content[0]",
            "text-only",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [{"type": "image", "source": {}}],
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].content[0]",
            "text-only",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t"}]}]},
            "messages[0].content[0]",
            "assistant turn",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
            "messages[0].content[0].tool_use_id",
            "tool_use",
        ),
        (
            {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            "tools[0].type",
            "web_search_20250305",
        ),
        ({"tools": [{"name": "w"}]}, "tools[0].input_schema", "JSON Schema"),
        ({"tools": [TOOL], "tool_choice": {"type": "required"}}, "tool_choice.type", "'any'"),
        ({"tools": [TOOL], "tool_choice": {"type": "tool"}}, "tool_choice.name", "name"),
        ({"tools": [TOOL], "tool_choice": {"type": "tool", "name": "x"}}, "tool_choice", "'x'"),
        ({"tool_choice": {"type": "any"}}, "tool_choice", "needs tools"),
        ({"tools": [TOOL], "tool_choice": {"type": ["auto"]}}, "tool_choice.type", "'auto'"),
        ({"thinking": {"type": "on"}}, "thinking.type", "enabled"),
        ({"mcp_servers": [{"url": "u"}]}, "mcp_servers", "MCP"),
        ({"output_config": {"format": {"type": "json_schema"}}}, "output_config.format", "chat"),
    ],
)
def test_what_ember_cannot_take_is_a_400_naming_the_field(
    body: dict[str, Any], param: str, words: str
) -> None:
    err = refused(**body)
    assert err.param == param and words in err.message, (err.param, err.message)


def test_max_tokens_is_cut_to_the_context() -> None:
    assert _fit(32000, 100, 512) == 412
    assert _fit(8, 100, 512) == 8
    with pytest.raises(InvalidRequestError) as e:
        _fit(8, 512, 512)
    assert e.value.message.startswith("prompt is too long: 512 tokens > 511 maximum")


def shape(mode: str = "none", forced: str | None = None) -> _Shape:
    return _Shape(mode, forced, frozenset({"w"}), ["END"])


def test_replies_end_for_anthropic_reasons() -> None:
    assert shape().reply("Hi", "", "stop", None).stop_reason == "end_turn"
    assert shape().reply("Hi", "", "length", None).stop_reason == "max_tokens"
    cut = shape().reply("Hi", "", "stop", "END")
    assert (cut.stop_reason, cut.stop_sequence) == ("stop_sequence", "END")
    call = '<tool_call>{"name": "w", "arguments": {"c": "P"}}</tool_call>'
    reply = shape("auto").reply("Let me see. " + call, "Hmm.", "stop", None)
    assert reply.stop_reason == "tool_use" and reply.text == "Let me see."
    [use] = reply.calls
    assert use.name == "w" and use.input == {"c": "P"} and use.id.startswith("toolu_")
    named = shape("named", "w").reply('{"c": "O"}', "", "stop", None)
    assert named.calls[0].input == {"c": "O"} and named.text == ""
    partial = shape("named", "w").reply('{"c": ', "", "length", None)
    assert partial.calls == [] and partial.text == '{"c": ' and partial.stop_reason == "max_tokens"
    hidden = _Shape("none", None, frozenset(), [], show_thinking=False)
    assert hidden.reply("Hi", "thought", "stop", None).thinking == ""


def parse(sse: list[str]) -> list[Any]:
    events = []
    for chunk in sse:
        kind, data = chunk.strip().split("\n")
        event = EVENT.validate_python(json.loads(data.removeprefix("data: ")))
        assert kind == f"event: {event.type}"
        events.append(event)
    return events


def test_stream_events_accumulate_to_the_whole_message() -> None:
    head = MessageHead("msg_1", "tiny")
    use = ToolUse("toolu_1", "w", {"c": "P"})
    reply = Reply("I think.", "Hello there", [use], "tool_use")
    usage = Usage(prompt_tokens=20, output_tokens=7, cached_tokens=16)
    ev = Events(head)
    sse = [ev.start(Usage(20, 0, 16))]
    sse += ev.thinking("I ") + ev.thinking("think.") + ev.text("Hello") + ev.text(" there")
    sse += ev.tool_use(use) + ev.end(reply, usage)
    events = parse(sse)
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    snapshot = None
    for event in events:
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs={})
    whole = Message.model_validate(head.json(reply.blocks(), usage, "tool_use"))
    assert snapshot is not None
    assert snapshot.model_dump() == whole.model_dump()
    assert whole.usage.input_tokens == 4 and whole.usage.cache_read_input_tokens == 16


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (500, "api_error"),
        (503, "api_error"),  # a full queue: retried, and not Anthropic's own overload
        (504, "timeout_error"),
    ],
)
def test_errors_on_messages_routes_are_anthropic_shaped(status: int, kind: str) -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        r = error_response(path, status, "why")
        assert r.status_code == status
        assert json.loads(bytes(r.body)) == {
            "type": "error",
            "error": {"type": kind, "message": "why"},
        }
    assert error_response("/v1/messages", 503, "busy").headers["retry-after"] == "1"
    assert "type" not in json.loads(bytes(error_response("/v1/models", status, "x").body))
