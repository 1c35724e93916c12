"""Tool calls in a model's output text, in the formats the chat templates teach:

- Qwen / Hermes: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one block per call;
- Llama 3.x: an optional `<|python_tag|>`, then `{"name": ..., "parameters": {...}}` objects
  (several separated by `;`), and nothing else in the message;
- Mistral: `[TOOL_CALLS]` (a special token: the server keeps special tokens in the text of
  Mistral requests with tools, see mistral_calls()), then a JSON array of {"name", "arguments"}
  (tokenizer v3, Mistral 7B v0.3) or, from tokenizer v11 on, `name[ARGS]{...}` after each
  `[TOOL_CALLS]` (with a `[CALL_ID]id` before `[ARGS]` in some versions).

Text that is not a well-formed call stays content: a model that talks about JSON is not calling.
"""

from __future__ import annotations

import json
import re
import secrets
import string
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ember.tokenizer.tokenizer import Tokenizer

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_PYTHON_TAG = "<|python_tag|>"
MISTRAL_CALLS = "[TOOL_CALLS]"
_MISTRAL_ARGS, _MISTRAL_CALL_ID = "[ARGS]", "[CALL_ID]"
_MISTRAL_NAME = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*")
# Mistral's templates refuse other tool call ids (mistral-common's validator: [a-zA-Z0-9]{9}).
_ALNUM = string.ascii_letters + string.digits
_MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str | None = None  # the model's own, where its format has one (Mistral's [CALL_ID])


@dataclass(slots=True)
class ParsedOutput:
    content: str
    tool_calls: list[ToolCall]


def might_call_tools(template: str | None) -> bool:
    """Whether a chat template renders tools (so the model may answer with tool calls)."""
    return bool(template) and "tools" in (template or "")


def mistral_calls(tokenizer: Tokenizer) -> bool:
    """Whether the model writes tool calls after Mistral's `[TOOL_CALLS]` token: its requests
    with tools then decode special tokens (as vLLM does), and call ids are 9 alphanumerics."""
    return tokenizer.token_to_id(MISTRAL_CALLS) is not None


def new_call_id(mistral: bool = False, prefix: str = "chatcmpl-tool-") -> str:
    """An id for a parsed tool call, as vLLM makes them (`prefix` + a uuid; Mistral's templates
    want 9 alphanumerics)."""
    if mistral:
        return "".join(secrets.choice(_ALNUM) for _ in range(9))
    return f"{prefix}{uuid.uuid4().hex}"


def parse_tool_calls(text: str, names: Collection[str] | None = None) -> ParsedOutput:
    """Split `text` into content and tool calls (Mistral's after `[TOOL_CALLS]`, Hermes blocks,
    else Llama 3.x JSON, which may follow some text after a `<|python_tag|>`). A reply that is
    bare JSON, with no tag, is a call only if each object has "parameters" (or "arguments")
    and, given the offered tools' `names`, calls one of them: {"name": "Bob", "age": 3} is
    content."""
    if MISTRAL_CALLS in text:
        return _parse_mistral(text)
    if "<tool_call>" in text:
        return _parse_hermes(text)
    at = text.find(_PYTHON_TAG)
    if at > 0:
        calls = _parse_llama3(text[at:]).tool_calls
        return ParsedOutput(text[:at].strip(), calls) if calls else ParsedOutput(text, [])
    bare = at < 0  # at == 0: the reply opens with the tag
    parsed = _parse_llama3(text, require_args=bare)
    if bare and names is not None and any(c.name not in names for c in parsed.tool_calls):
        return ParsedOutput(text, [])
    return parsed


def tool_names(tools: list[dict[str, Any]] | None) -> frozenset[str]:
    """The names of the functions offered in a request's tools."""
    return frozenset(
        str((t.get("function") or t).get("name")) for t in tools or [] if isinstance(t, dict)
    )


def _call(obj: Any, require_args: bool = False) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    if require_args and "arguments" not in obj and "parameters" not in obj:
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


def _parse_mistral(text: str) -> ParsedOutput:
    content, _, calls_text = text.partition(MISTRAL_CALLS)
    decoder = json.JSONDecoder()
    calls: list[ToolCall] = []
    if calls_text.lstrip().startswith("["):  # v3: one JSON array of calls
        try:
            array, _ = decoder.raw_decode(calls_text.lstrip())
        except json.JSONDecodeError:
            return ParsedOutput(text, [])
        if not isinstance(array, list):
            return ParsedOutput(text, [])
        for obj in array:
            call = _call(obj)
            if call is None:
                return ParsedOutput(text, [])
            call.id = _mistral_id(obj.get("id"))
            calls.append(call)
        return ParsedOutput(content.strip(), calls)
    for piece in calls_text.split(MISTRAL_CALLS):  # v11+: name[CALL_ID]id[ARGS]{...} each
        name = _MISTRAL_NAME.match(piece)
        if name is None:
            return ParsedOutput(text, [])
        rest, call_id = piece[name.end() :], None
        if rest.startswith(_MISTRAL_CALL_ID):
            call_id, _, rest = rest[len(_MISTRAL_CALL_ID) :].partition(_MISTRAL_ARGS)
        elif rest.startswith(_MISTRAL_ARGS):
            rest = rest[len(_MISTRAL_ARGS) :]
        try:
            args, end = decoder.raw_decode(rest.strip())
        except json.JSONDecodeError:
            return ParsedOutput(text, [])
        if not isinstance(args, dict) or rest.strip()[end:].strip():
            return ParsedOutput(text, [])
        calls.append(ToolCall(name.group(1), args, _mistral_id(call_id)))
    return ParsedOutput(content.strip(), calls)


def _mistral_id(value: Any) -> str | None:
    ok = isinstance(value, str) and _MISTRAL_ID.fullmatch(value.strip())
    return value.strip() if ok else None


def _parse_llama3(text: str, require_args: bool = False) -> ParsedOutput:
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
        call = _call(obj, require_args)
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


def read_reply(text: str, mode: str, forced: str | None, names: Collection[str]) -> ParsedOutput:
    """A whole reply's content and calls, as every route reads them under tool_choice `mode`
    ("none", "auto", "required", "named"): a forced call is the grammar's JSON (the `forced`
    function's arguments, or an array of calls), none when cut short by max_tokens (the text then
    stays content); "auto" parses the model's own markup; "none" is all content."""
    if mode in ("required", "named"):
        try:
            calls = calls_from_json(text, forced)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            return ParsedOutput(text, [])
        if all(isinstance(c.arguments, dict) for c in calls):
            return ParsedOutput("", calls)
        return ParsedOutput(text, [])
    if mode == "auto":
        parsed = parse_tool_calls(text, names)
        if parsed.tool_calls:
            return parsed
    return ParsedOutput(text, [])


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


_CALL_STARTS = ("<tool_call>", _PYTHON_TAG, MISTRAL_CALLS, "{")
# Tags that open a tool call after some text (a reply that starts with "{" is a call only as a
# whole, see _parse_llama3).
_CALL_TAGS = ("<tool_call>", _PYTHON_TAG, MISTRAL_CALLS)


class ToolCallGate:
    """For streaming with tools: decides from a reply's first characters whether it is a tool
    call (held back, to be parsed whole at the end) or text (streamed as it comes). Text is
    still watched for a tag that opens a call: from the tag on, everything is held, so the
    markup is never streamed as content; the end of the text that might begin a tag, and
    trailing whitespace (which parse_tool_calls strips before a call), wait for what follows.

    `mode` stays "text" once text has streamed; held() is then the withheld end of the reply:
    a call (send only its parsed tool_calls) or, if it does not parse, content to send."""

    def __init__(self) -> None:
        self.mode = "undecided"  # then "call" or "text"
        self._held = ""
        self._tagged = False  # in text mode: a call tag was seen; hold everything from it

    def feed(self, text: str) -> str:
        """The part of `text` to stream now."""
        self._held += text
        if self.mode == "text":
            return self._release()
        if self.mode == "call":
            return ""
        head = self._held.lstrip()
        if not head or any(s.startswith(head) for s in _CALL_STARTS):
            return ""  # only whitespace, or a marker still arriving
        if head.startswith(_CALL_STARTS):
            self.mode = "call"
            return ""
        self.mode = "text"
        return self._release()

    def _release(self) -> str:
        """In text mode: stream all but a call tag onward, a possible partial tag and trailing
        whitespace."""
        if self._tagged:
            return ""
        at = min((i for i in (self._held.find(t) for t in _CALL_TAGS) if i >= 0), default=-1)
        if at >= 0:
            self._tagged = True
            end = at
        else:
            end = len(self._held) - max(partial_suffix(self._held, t) for t in _CALL_TAGS)
        end = len(self._held[:end].rstrip())
        out, self._held = self._held[:end], self._held[end:]
        return out

    def held(self) -> str:
        """What was held back: a call, or in text mode the withheld end of the reply."""
        return self._held


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag`: what to hold
    back while streaming, in case the tag is still arriving."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
