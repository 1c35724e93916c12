"""Rendering Hugging Face chat templates with jinja2, the way transformers renders them.

Templates come from model repositories, so they are untrusted code: they run in jinja2's
immutable sandbox and see only plain JSON-like data.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.utils import Namespace

from ember.errors import EmberError, InvalidRequestError, ModelLoadError
from ember.tokenizer.template_budget import BudgetedEnvironment, RenderBudget, render_within

# Names under which a message's reasoning arrives; templates read `reasoning_content` (Qwen3,
# DeepSeek) or `thinking` (gpt-oss, Ollama's API), so each message gets both.
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for transformers' training
    masks. Serving needs only the text, so the block renders its body in its own scope."""

    tags = {"generation"}  # noqa: RUF012 - jinja's Extension declares it this way

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def _check_namespace_key(name: object) -> None:
    # The sandbox blocks reading underscore attributes; this blocks storing them, so a template
    # cannot plant `__class__`-like names on a namespace object.
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(
            f"chat templates cannot store underscore-prefixed names on a namespace: {name!r}"
        )


class _SafeNamespace(Namespace):
    # Positional-only self, as in jinja's Namespace, so that namespace(self=...) works.
    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _check_namespace_key(name)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_namespace_key(name)
        super().__setitem__(name, value)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # jinja's own tojson escapes <, >, & and ' for HTML; chat templates need the plain JSON.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> None:
    raise InvalidRequestError(f"the model's chat template rejected the request: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=1)
def _environment() -> BudgetedEnvironment:
    env = BudgetedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, loopcontrols]
    )
    env.set_filter("tojson", _tojson)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _SafeNamespace
    return env


@lru_cache(maxsize=64)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template for `source`; each distinct source is compiled once per process."""
    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ModelLoadError(
            f"the model's chat template does not compile (line {exc.lineno}: {exc.message}); "
            "fix chat_template in tokenizer_config.json or chat_template.jinja"
        ) from exc


def syntax_error(source: str) -> str | None:
    """Why `source` does not compile as a chat template ("line 1: unexpected '.'"); None if
    it compiles."""
    try:
        compile_template(source)
    except ModelLoadError as exc:
        cause = exc.__cause__
        if isinstance(cause, jinja2.TemplateSyntaxError):
            return f"line {cause.lineno}: {cause.message}"
        return exc.message
    return None


def _plain(value: Any) -> Any:
    """A copy of `value` made of JSON-like types only; anything else becomes a '<Type>' string,
    so templates cannot reach methods of rich objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return f"<{type(value).__name__}>"


def _prepare_message(message: Any) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise InvalidRequestError(f"each message must be an object, got {message!r}")
    # Keys set to None are dropped (OpenAI clients send content=None with tool_calls); templates
    # handle a missing key but would print "None".
    out = {str(k): _plain(v) for k, v in message.items() if v is not None}
    reasoning = next((out[k] for k in _REASONING_KEYS if k in out), None)
    if reasoning is not None:
        out.setdefault("reasoning_content", reasoning)
        out.setdefault("thinking", reasoning)
    return out


def render_chat_template(
    source: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool,
    tools: list[dict[str, Any]] | None,
    special_tokens: dict[str, str],
    template_kwargs: dict[str, Any],
    budget: RenderBudget | None = None,
) -> str:
    """Render `source` over the conversation. Template variables, in increasing precedence:
    the special tokens (bos_token, eos_token, ...), then `template_kwargs`, then messages,
    tools, documents and add_generation_prompt. The render is held to `budget` (by default
    template_budget's limits): past it, InvalidRequestError."""
    template = compile_template(source)
    variables: dict[str, Any] = {**special_tokens, **_plain(template_kwargs)}
    variables["messages"] = [_prepare_message(m) for m in messages]
    variables["tools"] = _plain(tools)
    variables["documents"] = _plain(template_kwargs.get("documents"))
    variables["add_generation_prompt"] = add_generation_prompt
    try:
        return render_within(budget or RenderBudget(), lambda: template.generate(**variables))
    except EmberError:
        raise
    except RecursionError:
        raise InvalidRequestError(
            "the model's chat template recursed too deeply on these messages (a macro or "
            "recursive loop that does not end); fix or replace the template"
        ) from None
    except MemoryError:
        raise InvalidRequestError(
            "the model's chat template ran out of memory on these messages; fix or replace "
            "the template, or send a shorter conversation"
        ) from None
    except (
        jinja2.TemplateError,
        TypeError,
        ValueError,
        KeyError,
        IndexError,
        ArithmeticError,
    ) as exc:
        raise InvalidRequestError(
            f"the model's chat template failed on these messages ({type(exc).__name__}: {exc}); "
            "check each message's role and content"
        ) from exc
