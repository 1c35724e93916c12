"""Anthropic's Messages API request (POST /v1/messages and /v1/messages/count_tokens), checked
and turned into the chat request that /v1/chat/completions runs, as Ollama and vLLM serve it:

- `system` (a string or text blocks) becomes the system message;
- a user turn's `tool_result` blocks become `tool` messages (before the turn's text), an
  assistant turn's `tool_use` blocks its `tool_calls`, and its `thinking` its
  `reasoning_content` (the templates that show earlier reasoning read it; others ignore it);
- custom tools (`name`, `description`, `input_schema`) become function tools, `tool_choice`
  auto / any / tool / none chat's "auto" / "required" / a named function / "none";
- `thinking` enabled / disabled becomes the template's `enable_thinking`, as Ollama's `think`
  does (`budget_tokens` cannot be enforced and is not: the reply still ends at max_tokens);
- a last assistant turn of text is continued (Anthropic's prefill).

vLLM's sampling extras (seed, min_tokens, ignore_eos, penalties, ...) are taken as on the
OpenAI routes, for clients that send them (the anthropic client's extra_body).
`cache_control` is accepted anywhere and ignored (ember's prefix cache needs no hints);
`metadata`, `service_tier` and fields ember does not know are ignored, as Ollama does, since
Claude Code sends beta fields freely. What ember cannot do (images and documents, server tools
such as web_search, MCP servers, structured output) is a 400 naming the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ember.errors import InvalidRequestError
from ember.server.errors import validation_message
from ember.server.protocol_openai import ChatCompletionRequest

# Fields that would change the reply in ways ember cannot honour: 400 rather than ignored.
_REFUSED = {
    "mcp_servers": "MCP servers are not supported: ember runs no tools itself; connect the MCP "
    "servers in your client and send their tools as custom tools",
    "container": "containers (code execution) are not supported: ember runs no server tools",
    "output_format": "structured output is not supported on /v1/messages; use "
    "/v1/chat/completions with response_format",
}
# vLLM's sampling extras, as the OpenAI routes take them. Not the ones that would fight the
# reply's shape: guided decoding (tools use the grammar), stop strings kept in the text (they
# are reported as stop_sequence), skip_special_tokens (tool-call markup).
_SAMPLING_EXTRAS = frozenset(
    {
        "seed",
        "min_p",
        "min_tokens",
        "ignore_eos",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "stop_token_ids",
        "logit_bias",
        "allowed_token_ids",
    }
)
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_THINKING = ("enabled", "disabled", "adaptive")


@dataclass(slots=True)
class Converted:
    """The chat request that runs a Messages request, and what the reply's shape needs."""

    chat: ChatCompletionRequest
    think: bool | None  # thinking enabled / disabled; None: the model's default
    stop_sequences: list[str]
    mode: str  # chat's tool mode: "none", "auto", "required" or "named"
    forced: str | None  # the named tool (checked to be one of the tools)


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = None  # required by /v1/messages, not by count_tokens
    messages: list[Any]
    system: str | list[Any] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stream: bool | None = False
    tools: list[Any] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None

    def check(self, count_only: bool = False) -> None:
        """400 for what is missing or what ember cannot do."""
        extra = self.model_extra or {}
        for name, why in _REFUSED.items():
            if extra.get(name):
                raise InvalidRequestError(why, param=name)
        if isinstance(extra.get("output_config"), dict) and extra["output_config"].get("format"):
            raise InvalidRequestError(_REFUSED["output_format"], param="output_config.format")
        if not count_only:
            if self.max_tokens is None:
                raise InvalidRequestError(
                    "max_tokens: Field required (the most tokens the reply may have)",
                    param="max_tokens",
                )
            if self.max_tokens < 1:
                raise InvalidRequestError(
                    f"max_tokens must be at least 1, got {self.max_tokens}", param="max_tokens"
                )
        kind = (self.thinking or {}).get("type")
        if self.thinking is not None and kind not in _THINKING:
            raise InvalidRequestError(
                f"thinking.type must be one of {', '.join(_THINKING)}, got {kind!r}",
                param="thinking.type",
            )

    @property
    def think(self) -> bool | None:
        kind = (self.thinking or {}).get("type")
        return {"enabled": True, "disabled": False}.get(kind) if kind else None

    def convert(self, count_only: bool = False) -> Converted:
        """The chat request that runs this one, checked as /v1/chat/completions checks it."""
        self.check(count_only)
        messages = chat_messages(self.system, self.messages)
        prefill = _prefill(messages)
        tools = [_chat_tool(t, i) for i, t in enumerate(self.tools or [])] or None
        choice, parallel = _chat_tool_choice(self.tool_choice, bool(tools))
        think = self.think
        extra = self.model_extra or {}
        data: dict[str, Any] = {k: v for k, v in extra.items() if k in _SAMPLING_EXTRAS}
        data |= {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "stop": list(self.stop_sequences or []),
            "tools": tools,
            "tool_choice": choice,
            "parallel_tool_calls": parallel,
            "add_generation_prompt": not prefill,
            "continue_final_message": prefill,
            "chat_template_kwargs": {"enable_thinking": think} if think is not None else None,
        }
        try:
            chat = ChatCompletionRequest.model_validate(data)
        except ValidationError as e:
            raise validation_message(e) from None
        chat.check()
        mode = chat.tool_mode
        forced = chat.forced_tool if mode == "named" else None
        return Converted(chat, think, list(self.stop_sequences or []), mode, forced)


def chat_messages(system: str | list[Any] | None, messages: list[Any]) -> list[dict[str, Any]]:
    """`system` and `messages` as chat messages."""
    out: list[dict[str, Any]] = []
    if system is not None:
        text = system if isinstance(system, str) else _texts(system, "system")
        if text:
            out.append({"role": "system", "content": text})
    if not messages:
        raise InvalidRequestError("messages: at least one message is required", param="messages")
    for i, msg in enumerate(messages):
        out.extend(_turn(msg, f"messages[{i}]"))
    return out


def _turn(msg: Any, where: str) -> list[dict[str, Any]]:
    """One Anthropic turn as chat messages: a user turn's tool results come first, as `tool`
    messages, then its text; an assistant turn is one message with its text, calls and
    reasoning."""
    role = msg.get("role") if isinstance(msg, dict) else None
    if role not in ("user", "assistant"):
        hint = " (send the system prompt in the top-level system field)" if role == "system" else ""
        raise InvalidRequestError(
            f"{where}.role must be 'user' or 'assistant', got {role!r}{hint}",
            param=f"{where}.role",
        )
    content = msg.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise InvalidRequestError(
            f"{where}.content must be a string or a list of content blocks",
            param=f"{where}.content",
        )
    texts: list[str] = []
    results: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    reasoning: list[str] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_result" and role == "user":
            results.append(_tool_result(block, at))
        elif kind == "tool_use" and role == "assistant":
            calls.append(_tool_use(block, at))
        elif kind == "thinking" and role == "assistant":
            if isinstance(block.get("thinking"), str):
                reasoning.append(block["thinking"])
        elif kind == "redacted_thinking" and role == "assistant":
            pass  # encrypted by Anthropic: nothing a local model can read
        else:
            raise _unsupported_block(kind, role, at)
    message: dict[str, Any] = {"role": role, "content": "\n".join(texts)}
    if role == "user":
        return results + ([message] if texts or not results else [])
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = "\n".join(reasoning)
    return [message]


def _unsupported_block(kind: Any, role: str, where: str) -> InvalidRequestError:
    if kind in ("image", "document"):
        why = (
            f"{kind} content is not supported: ember serves text-only models; send the "
            "content as text"
        )
    elif kind in ("tool_use", "thinking", "redacted_thinking", "tool_result"):
        other = "assistant" if role == "user" else "user"
        why = f"a {kind} block belongs in an {other} turn, not in a {role} turn"
    elif kind == "text":
        why = "a text block needs a text string"
    else:
        why = (
            f"unsupported content block type {kind!r}: ember takes text, tool_use, "
            "tool_result, thinking and redacted_thinking blocks"
        )
    return InvalidRequestError(f"{where}: {why}", param=where)


def _texts(blocks: Any, where: str) -> str:
    """The text of a list of text blocks; 400 for anything else."""
    if not isinstance(blocks, list):
        raise InvalidRequestError(f"{where} must be a string or a list of text blocks", param=where)
    texts = []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind in ("image", "document"):
            raise _unsupported_block(kind, "user", f"{where}[{j}]")
        if kind != "text" or not isinstance(block.get("text"), str):
            raise InvalidRequestError(
                f'{where}[{j}] must be a text block ({{"type": "text", "text": ...}}), '
                f"got {kind!r}",
                param=f"{where}[{j}]",
            )
        texts.append(block["text"])
    return "\n".join(texts)


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequestError(
            f"{where}.tool_use_id must be the id of the tool_use block it answers",
            param=f"{where}.tool_use_id",
        )
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        text = _texts(content, f"{where}.content")
    if block.get("is_error"):  # no template has a field for it: the model reads it in the text
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _tool_use(block: dict[str, Any], where: str) -> dict[str, Any]:
    for name in ("id", "name"):
        if not isinstance(block.get(name), str) or not block[name]:
            raise InvalidRequestError(
                f"{where}.{name} must be a non-empty string", param=f"{where}.{name}"
            )
    args = block.get("input", {})
    if not isinstance(args, dict):
        raise InvalidRequestError(f"{where}.input must be an object", param=f"{where}.input")
    return {
        "id": block["id"],
        "type": "function",
        "function": {"name": block["name"], "arguments": json.dumps(args)},
    }


def _prefill(messages: list[dict[str, Any]]) -> bool:
    """Whether the last message is an assistant's text for the model to continue."""
    last = messages[-1] if messages else None
    return (
        last is not None
        and last["role"] == "assistant"
        and "tool_calls" not in last
        and bool(last["content"].strip())
    )


def _chat_tool(tool: Any, i: int) -> dict[str, Any]:
    where = f"tools[{i}]"
    if not isinstance(tool, dict):
        raise InvalidRequestError(f"{where} must be an object", param=where)
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise InvalidRequestError(
            f"{where} is the server tool {kind!r} ({tool.get('name', 'unnamed')}): ember runs "
            "no server tools (web search, web fetch, code execution, bash, text editor, "
            "computer use, ...); send custom tools with an input_schema and run them yourself",
            param=f"{where}.type",
        )
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f"{where}.name must be a non-empty string", param=f"{where}.name")
    schema = tool.get("input_schema")
    if not isinstance(schema, dict):
        raise InvalidRequestError(
            f"{where}.input_schema must be a JSON Schema object", param=f"{where}.input_schema"
        )
    fn: dict[str, Any] = {"name": name, "parameters": schema}
    if isinstance(tool.get("description"), str):
        fn["description"] = tool["description"]
    return {"type": "function", "function": fn}


def _chat_tool_choice(
    choice: dict[str, Any] | None, has_tools: bool
) -> tuple[str | dict[str, Any] | None, bool]:
    """Chat's tool_choice and parallel_tool_calls."""
    if choice is None:
        return None, True
    parallel = not choice.get("disable_parallel_tool_use", False)
    kind = choice.get("type")
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(
                "tool_choice of type 'tool' needs the tool's name", param="tool_choice.name"
            )
        return {"type": "function", "function": {"name": name}}, parallel
    if not isinstance(kind, str) or kind not in _TOOL_CHOICES:
        raise InvalidRequestError(
            f"tool_choice.type must be 'auto', 'any', 'tool' or 'none', got {kind!r}",
            param="tool_choice.type",
        )
    if kind == "auto" and not has_tools:
        return None, parallel
    return _TOOL_CHOICES[kind], parallel
