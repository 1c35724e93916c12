"""The OpenAI Responses API's request (POST /v1/responses), checked and turned into the chat
request that /v1/chat/completions runs: `input` items become chat messages (a `reasoning` item
the `reasoning_content` of its assistant turn, which chat templates read), `instructions` the
system message, flat function tools chat's nested ones, `text.format` chat's response_format,
`reasoning.effort` a chat template kwarg.

ember keeps no state between requests, like Ollama and like vLLM's default (its response store
is off unless VLLM_ENABLE_RESPONSES_API_STORE is set): `store` is accepted and nothing is
stored, so a `previous_response_id` names a response this server does not have (404, as vLLM
answers), and the client sends the whole conversation in `input` instead.

Fields ember cannot honour (built-in tools, images, `conversation`, `background`, logprobs) and
fields it does not know are 400s naming the field, rather than silently ignored.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ember.errors import EmberError, InvalidRequestError
from ember.server.errors import validation_message
from ember.server.protocol_openai import REASONING_EFFORTS, ChatCompletionRequest, OpenAIRequest


class ResponseNotFoundError(EmberError):
    """A previous_response_id: this server stores no responses."""

    status_code = 404


# vLLM's sampling extras, sent through the openai client's extra_body, go on to the chat request.
_SAMPLING_EXTRAS = frozenset(OpenAIRequest.model_fields) - {
    "model",
    "stream",
    "stream_options",
    "n",
    "temperature",
    "top_p",
    "user",
    "prompt_logprobs",
} | {"chat_template_kwargs"}

# OpenAI fields that change nothing on a stateless, single-tier server: accepted, not used.
_ACCEPTED = frozenset(
    {
        "include",  # checked in check(): only logprobs would change the reply
        "max_tool_calls",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "service_tier",
        "store",
        "stream_options",  # only include_obfuscation, which a local server has no use for
        "top_logprobs",  # checked in check()
    }
)

_ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
_TEXT_PARTS = ("input_text", "output_text", "text")


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[Any]
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    stream: bool | None = False
    metadata: dict[str, str] | None = None
    user: str | None = None
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    truncation: str | None = None
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None

    def check(self) -> None:
        """400 for what ember cannot do; 404 for a previous response (nothing is stored)."""
        unknown = sorted(set(self.model_extra or {}) - _SAMPLING_EXTRAS - _ACCEPTED)
        if unknown:
            raise InvalidRequestError(
                f"unknown parameter '{unknown[0]}' for /v1/responses", param=unknown[0]
            )
        if self.previous_response_id is not None:
            raise ResponseNotFoundError(
                f"response '{self.previous_response_id}' not found: ember stores no responses "
                "(store is ignored, as vLLM and Ollama do by default); send the whole "
                "conversation in input, with the earlier output items and your "
                "function_call_output items",
                param="previous_response_id",
            )
        if self.conversation is not None:
            raise InvalidRequestError(
                "conversation is not supported: ember stores no conversations; send the whole "
                "conversation in input",
                param="conversation",
            )
        if self.background:
            raise InvalidRequestError(
                "background responses are not supported: ember stores no responses to fetch "
                "later; leave out background, or set it to false",
                param="background",
            )
        if self.prompt is not None:
            raise InvalidRequestError(
                "prompt (a stored prompt template) is not supported; send instructions and "
                "input instead",
                param="prompt",
            )
        extra = self.model_extra or {}
        if extra.get("top_logprobs") or "message.output_text.logprobs" in (
            extra.get("include") or []
        ):
            raise InvalidRequestError(
                "logprobs are not available on /v1/responses; use /v1/chat/completions with "
                "logprobs and top_logprobs",
                param="top_logprobs" if extra.get("top_logprobs") else "include",
            )
        if self.max_output_tokens is not None and self.max_output_tokens < 1:
            raise InvalidRequestError(
                f"max_output_tokens must be at least 1, got {self.max_output_tokens}",
                param="max_output_tokens",
            )
        if self.truncation not in (None, "auto", "disabled"):
            raise InvalidRequestError(
                f"truncation must be 'auto' or 'disabled', got {self.truncation!r}",
                param="truncation",
            )
        effort = (self.reasoning or {}).get("effort")
        if effort is not None and effort not in REASONING_EFFORTS:
            raise InvalidRequestError(
                f"reasoning.effort must be one of {', '.join(REASONING_EFFORTS)}, got {effort!r}",
                param="reasoning.effort",
            )

    def to_chat(self) -> ChatCompletionRequest:
        """The chat request that runs this one, checked as /v1/chat/completions checks it."""
        self.check()
        data: dict[str, Any] = {
            k: v for k, v in (self.model_extra or {}).items() if k in _SAMPLING_EXTRAS
        }
        data |= {
            "model": self.model,
            "messages": self.messages(),
            "max_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "user": self.user,
            "tools": [_chat_tool(t, i) for i, t in enumerate(self.tools or [])] or None,
            "tool_choice": _chat_tool_choice(self.tool_choice),
            "parallel_tool_calls": self.parallel_tool_calls,
            "response_format": _response_format(self.text),
        }
        data["reasoning_effort"] = (self.reasoning or {}).get("effort")
        try:
            chat = ChatCompletionRequest.model_validate(data)
        except ValidationError as e:
            raise validation_message(e) from None
        chat.check()
        return chat

    def messages(self) -> list[dict[str, Any]]:
        """`instructions` and `input` as chat messages."""
        out: list[dict[str, Any]] = []
        if self.instructions:
            out.append({"role": "system", "content": self.instructions})
        if isinstance(self.input, str):
            out.append({"role": "user", "content": self.input})
            return out
        if not self.input:
            raise InvalidRequestError("input must not be empty", param="input")
        for i, item in enumerate(self.input):
            _add_item(out, item, f"input[{i}]")
        if not out:
            raise InvalidRequestError("input holds no message", param="input")
        return out

    @property
    def tool_choice_echo(self) -> str | dict[str, Any]:
        return self.tool_choice if self.tool_choice is not None else "auto"

    @property
    def text_echo(self) -> dict[str, Any]:
        """`text` as the response object repeats it: the format, "text" by default."""
        text = dict(self.text or {})
        text.setdefault("format", {"type": "text"})
        return text

    def tools_echo(self) -> list[dict[str, Any]]:
        """The function tools as the response object lists them."""
        return [
            {
                "type": "function",
                "name": t["name"],
                "description": t.get("description"),
                "parameters": t.get("parameters"),
                "strict": t.get("strict"),
            }
            for t in self.tools or []
        ]


def _add_item(out: list[dict[str, Any]], item: Any, where: str) -> None:
    """Append input item `item` to the chat messages `out`."""
    if not isinstance(item, dict):
        raise InvalidRequestError(f"{where} must be an object (an input item)", param=where)
    kind = item.get("type") or ("message" if "role" in item else None)
    if kind == "message":
        msg = _message(item, where)
        if msg["role"] == "assistant" and out and _reasoning_only(out[-1]):  # as vLLM
            out[-1]["content"] = msg["content"]
        else:
            out.append(msg)
    elif kind == "function_call":
        arguments = _text_field(item, "arguments", where, empty_ok=True) or "{}"
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise InvalidRequestError(
                f"{where}.arguments must be a JSON object, as a string",
                param=f"{where}.arguments",
            )
        name = _text_field(item, "name", where)
        call = {
            "id": _text_field(item, "call_id", where),
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        last = out[-1] if out else None
        if last is not None and last["role"] == "assistant":  # one turn: its text and calls
            last.setdefault("tool_calls", []).append(call)
        else:
            out.append({"role": "assistant", "content": "", "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        content = output if isinstance(output, str) else _parts_text(output, f"{where}.output")
        out.append(
            {
                "role": "tool",
                "tool_call_id": _text_field(item, "call_id", where),
                "content": content,
            }
        )
    elif kind == "reasoning":
        # As vLLM: the thinking of the assistant turn before it if that has none yet, else of a
        # new turn that the next message or calls join (a turn's reasoning item comes first).
        text = _reasoning_text(item, where)
        last = out[-1] if out else None
        if last is not None and last["role"] == "assistant" and "reasoning_content" not in last:
            last["reasoning_content"] = text
        else:
            out.append({"role": "assistant", "content": None, "reasoning_content": text})
    elif kind is None:
        raise InvalidRequestError(
            f"{where} needs a type ('message', 'function_call', 'function_call_output' or "
            "'reasoning') or a role",
            param=f"{where}.type",
        )
    else:
        raise InvalidRequestError(
            f"unsupported input item type {kind!r} in {where}: ember takes 'message', "
            "'function_call', 'function_call_output' and 'reasoning' items (item_reference "
            "needs stored responses, which ember does not keep)",
            param=f"{where}.type",
        )


def _reasoning_only(msg: dict[str, Any]) -> bool:
    """An assistant turn opened by a reasoning item, its text still to come."""
    return msg["role"] == "assistant" and msg["content"] is None


def _reasoning_text(item: dict[str, Any], where: str) -> str:
    """A reasoning item's text: its reasoning_text parts, else (as vLLM) its summary's."""
    if item.get("encrypted_content"):
        raise InvalidRequestError(
            f"{where}.encrypted_content is not supported: ember keeps reasoning as plain text; "
            "send the reasoning item as ember returned it, with its reasoning_text content",
            param=f"{where}.encrypted_content",
        )
    content, summary = item.get("content"), item.get("summary")
    field, parts, kind = "content", content, "reasoning_text"
    if not content:
        field, parts, kind = "summary", summary or [], "summary_text"
    if not isinstance(parts, list):
        raise InvalidRequestError(
            f"{where}.{field} must be a list of {kind} parts", param=f"{where}.{field}"
        )
    texts = []
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            raise InvalidRequestError(
                f"{where}.{field}[{j}] must be a {kind} part with a text string",
                param=f"{where}.{field}[{j}]",
            )
        texts.append(part["text"])
    return "\n".join(texts)


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise InvalidRequestError(
            f"{where}.role must be one of {', '.join(_ROLES)}, got {role!r}", param=f"{where}.role"
        )
    content = item.get("content")
    if not isinstance(content, str):
        content = _parts_text(content, f"{where}.content")
    return {"role": _ROLES[role], "content": content}


def _parts_text(parts: Any, where: str) -> str:
    """The text of a list of content parts; 400 for parts other than text."""
    if not isinstance(parts, list):
        raise InvalidRequestError(
            f"{where} must be a string or a list of content parts", param=where
        )
    texts = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
            continue
        if kind not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            raise InvalidRequestError(
                f"unsupported content part {kind!r} in {where}[{j}]: this model accepts text "
                "only ('input_text' or 'output_text' parts with a text string)",
                param=f"{where}[{j}]",
            )
        texts.append(part["text"])
    return "\n".join(texts)


def _text_field(item: dict[str, Any], name: str, where: str, empty_ok: bool = False) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not (value or empty_ok):
        raise InvalidRequestError(
            f"{where}.{name} must be a non-empty string", param=f"{where}.{name}"
        )
    return value


def _chat_tool(tool: Any, i: int) -> dict[str, Any]:
    """A Responses function tool (flat: name, parameters, ... at the top) as chat's nested one."""
    where = f"tools[{i}]"
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind != "function":
        raise InvalidRequestError(
            f"unsupported tool type {kind!r} in {where}: ember runs no built-in tools "
            "(web_search, file_search, code_interpreter, ...); send function tools and run "
            "them yourself",
            param=f"{where}.type",
        )
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(
            f"{where}.name must be a non-empty string (Responses tools are flat: "
            '{"type": "function", "name", "parameters"}, not nested under "function")',
            param=f"{where}.name",
        )
    parameters = tool.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidRequestError(
            f"{where}.parameters must be a JSON Schema object", param=f"{where}.parameters"
        )
    fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
    return {"type": "function", "function": fn}


def _chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if not isinstance(choice, dict):
        return choice
    if choice.get("type") != "function":
        raise InvalidRequestError(
            f"unsupported tool_choice type {choice.get('type')!r}: use 'none', 'auto', "
            '\'required\' or {"type": "function", "name": ...}',
            param="tool_choice",
        )
    return {"type": "function", "function": {"name": choice.get("name")}}


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """`text.format` as chat's response_format."""
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        got = fmt.get("type") if isinstance(fmt, dict) else fmt
        raise InvalidRequestError(
            f"text.format.type must be 'text', 'json_object' or 'json_schema', got {got!r}",
            param="text.format",
        )
    if fmt["type"] != "json_schema":
        return {"type": fmt["type"]}
    if not isinstance(fmt.get("schema"), dict | bool):
        raise InvalidRequestError(
            "text.format.schema must be a JSON Schema object", param="text.format.schema"
        )
    spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
    return {"type": "json_schema", "json_schema": spec}
