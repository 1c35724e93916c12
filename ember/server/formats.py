"""Output formats requested over HTTP, turned into the engine's StructuredSpec: Ollama's `format`
("json" or a JSON Schema), OpenAI's `response_format` (json_object / json_schema) and vLLM's
guided-decoding extras (guided_json, guided_regex, guided_choice)."""

from __future__ import annotations

import re
from typing import Any

from ember.engine.structured import StructuredSpec
from ember.errors import InvalidRequestError
from ember.tokenizer.tool_calls import tool_call_schema


def ollama_format(value: str | dict[str, Any] | None) -> StructuredSpec | None:
    """Ollama's `format`: "" or absent (free text), "json", or a JSON Schema object."""
    if value in (None, "", {}):
        return None
    if value == "json":
        return StructuredSpec.json_object()
    if isinstance(value, dict):
        return _checked(StructuredSpec.json_schema(value), "format")
    raise InvalidRequestError(
        f'invalid format {value!r}: use "json" or a JSON Schema object', param="format"
    )


def openai_response_format(value: dict[str, Any] | None) -> StructuredSpec | None:
    """OpenAI's `response_format`: {"type": "text" | "json_object"} or
    {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}."""
    if not value:
        return None
    kind = value.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredSpec.json_object()
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is None and isinstance(spec, dict):
            schema = spec.get("json_schema")  # some clients nest it under this name
        if not isinstance(schema, dict | bool):
            raise InvalidRequestError(
                "response_format.json_schema.schema must be a JSON Schema object",
                param="response_format",
            )
        return _checked(StructuredSpec.json_schema(schema), "response_format")
    raise InvalidRequestError(
        f"response_format type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
        param="response_format",
    )


def vllm_guided(
    guided_json: dict[str, Any] | str | None,
    guided_regex: str | None,
    guided_choice: list[str] | None = None,
) -> StructuredSpec | None:
    """vLLM's extra request fields for guided decoding (at most one of them)."""
    given = [guided_json is not None, bool(guided_regex), guided_choice is not None]
    if sum(given) > 1:
        raise InvalidRequestError(
            "send at most one of guided_json, guided_regex and guided_choice", param="guided_json"
        )
    if guided_choice is not None:
        if not guided_choice or not all(guided_choice):
            raise InvalidRequestError(
                "guided_choice must list one or more non-empty strings", param="guided_choice"
            )
        pattern = "|".join(re.escape(c) for c in guided_choice)
        return _checked(StructuredSpec("regex", f"({pattern})"), "guided_choice")
    if guided_json is not None:
        if isinstance(guided_json, str):
            return _checked(StructuredSpec("json_schema", guided_json), "guided_json")
        return _checked(StructuredSpec.json_schema(guided_json), "guided_json")
    if guided_regex:
        return _checked(StructuredSpec("regex", guided_regex), "guided_regex")
    return None


def _checked(spec: StructuredSpec, param: str) -> StructuredSpec:
    try:
        spec.validate()
    except InvalidRequestError as e:
        raise InvalidRequestError(e.message, param=param) from None
    return spec


def forced_call_grammar(
    mode: str, tools: list[dict[str, Any]] | None, forced: str | None, parallel: bool | None
) -> StructuredSpec | None:
    """The grammar a forced tool_choice puts on the output, as vLLM builds it: the `forced`
    function's arguments ("named"), or an array of calls to the tools ("required"; one at most
    unless `parallel`); None for "auto" and "none"."""
    if mode not in ("required", "named"):
        return None
    return StructuredSpec.json_schema(tool_call_schema(tools or [], forced, parallel is not False))
