"""Tool calls in a model's output text, in the formats the chat templates teach:

- Qwen / Hermes: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one block per call;
- Llama 3.x: an optional `<|python_tag|>`, then `{"name": ..., "parameters": {...}}` objects
  (several separated by `;`), and nothing else in the message.

Text that is not a well-formed call stays content: a model that talks about JSON is not calling.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_PYTHON_TAG = "<|python_tag|>"


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ParsedOutput:
    content: str
    tool_calls: list[ToolCall]


def might_call_tools(template: str | None) -> bool:
    """Whether a chat template renders tools (so the model may answer with tool calls)."""
    return bool(template) and "tools" in (template or "")


def parse_tool_calls(text: str) -> ParsedOutput:
    """Split `text` into content and tool calls (Hermes blocks, else Llama 3.x JSON)."""
    if "<tool_call>" in text:
        return _parse_hermes(text)
    return _parse_llama3(text)


def _call(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models emit the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], args)


def _parse_hermes(text: str) -> ParsedOutput:
    calls: list[ToolCall] = []
    for body in _HERMES.findall(text):
        try:
            call = _call(json.loads(body))
        except json.JSONDecodeError:
            call = None
        if call is None:
            return ParsedOutput(text, [])
        calls.append(call)
    content = text[: text.index("<tool_call>")].strip()
    return ParsedOutput(content, calls)


def _parse_llama3(text: str) -> ParsedOutput:
    body = text.strip()
    if body.startswith(_PYTHON_TAG):
        body = body[len(_PYTHON_TAG) :].strip()
    if not body.startswith("{"):
        return ParsedOutput(text, [])
    calls: list[ToolCall] = []
    decoder = json.JSONDecoder()
    pos = 0
    while pos < len(body):
        try:
            obj, end = decoder.raw_decode(body, pos)
        except json.JSONDecodeError:
            return ParsedOutput(text, [])
        call = _call(obj)
        if call is None:
            return ParsedOutput(text, [])
        calls.append(call)
        pos = end
        while pos < len(body) and body[pos] in " \t\r\n;":
            pos += 1
    return ParsedOutput("", calls)


def calls_from_json(text: str, named: str | None) -> list[ToolCall]:
    """Tool calls from output constrained by tool_call_schema(): the arguments object of the
    named tool, or an array of {"name", "parameters"} objects."""
    data = json.loads(text)
    if named is not None:
        return [ToolCall(named, data)]
    return [ToolCall(c["name"], c.get("parameters", {})) for c in data]


def tool_call_schema(
    tools: list[dict[str, Any]], named: str | None, parallel: bool = True
) -> dict[str, Any]:
    """The JSON Schema that forces tool calls (tool_choice "required" or a named tool): the
    named tool's parameters, or a non-empty array of calls to any of the tools (one call at
    most unless `parallel`)."""

    def params(tool: dict[str, Any]) -> dict[str, Any]:
        p = tool.get("function", tool).get("parameters")
        return p if isinstance(p, dict) else {"type": "object"}

    def name(tool: dict[str, Any]) -> str:
        return str(tool.get("function", tool).get("name", ""))

    if named is not None:
        return params(next(t for t in tools if name(t) == named))
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": name(t)}, "parameters": params(t)},
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": options}}
    if not parallel:
        schema["maxItems"] = 1
    return schema


_CALL_STARTS = ("<tool_call>", "<|python_tag|>", "{")


class ToolCallGate:
    """For streaming with tools: decides from a reply's first characters whether it is a tool
    call (held back, to be parsed whole at the end) or text (streamed as it comes)."""

    def __init__(self) -> None:
        self.mode = "undecided"  # then "call" or "text"
        self._held = ""

    def feed(self, text: str) -> str:
        """The part of `text` to stream now."""
        if self.mode == "text":
            return text
        self._held += text
        if self.mode == "call":
            return ""
        head = self._held.lstrip()
        if not head or any(s.startswith(head) for s in _CALL_STARTS):
            return ""  # only whitespace, or a marker still arriving
        if head.startswith(_CALL_STARTS):
            self.mode = "call"
            return ""
        self.mode = "text"
        out, self._held = self._held, ""
        return out

    def held(self) -> str:
        """What was held back (call at the end of the reply)."""
        return self._held
