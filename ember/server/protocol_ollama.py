"""Ollama's request bodies and response chunks, with Ollama's field names (docs/api.md).

Durations in responses are nanoseconds; `created_at` is RFC 3339 UTC with nanoseconds.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ember.engine.structured import StructuredSpec
from ember.errors import InvalidRequestError
from ember.outputs import RequestOutput
from ember.sampling_params import OutputKind, SamplingParams
from ember.server.errors import validation_message
from ember.server.formats import ollama_format
from ember.tokenizer.chat_template import syntax_error

# Ollama's own defaults (api/types.go DefaultOptions) for the options a client leaves out, so a
# request means the same here as there. Penalties stay off unless asked for (Ollama's default
# repeat_penalty is 1.1); a client's repeat_penalty looks back over repeat_last_n tokens, 64 unless
# it says otherwise, as in Ollama.
OLLAMA_DEFAULT_OPTIONS: dict[str, Any] = {"temperature": 0.8, "top_k": 40, "top_p": 0.9}
OLLAMA_REPEAT_LAST_N = 64


class Options(BaseModel):
    """Ollama's Modelfile parameters (api/types.go Options). Honoured: the sampling ones below,
    num_ctx, num_predict and repeat_last_n. Accepted and ignored, since they tune llama.cpp or
    have no counterpart here: num_keep, typical_p, penalize_newline, mirostat*, tfs_z, numa,
    num_batch, num_gpu, main_gpu, use_mmap, num_thread, low_vram, vocab_only, use_mlock."""

    model_config = ConfigDict(extra="ignore")

    num_predict: int | None = None  # tokens to generate; -1, -2 or absent: until the context ends
    num_ctx: int | None = None  # context length; clamped to the server's max_model_len
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    seed: int | None = None  # negative: random
    stop: list[str] | str | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None  # tokens the penalties look back over; 0 off, -1 num_ctx
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


# Ollama's options that ember accepts and ignores (see Options); any other name is a typo.
IGNORED_OPTIONS = frozenset(
    {
        "num_keep",
        "typical_p",
        "penalize_newline",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "tfs_z",
        "numa",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "use_mmap",
        "num_thread",
        "low_vram",
        "vocab_only",
        "use_mlock",
        "f16_kv",
        "logits_all",
        "embedding_only",
        "num_gqa",
        "rope_frequency_base",
        "rope_frequency_scale",
    }
)


def check_template(template: str) -> None:
    """400 for a model template (/api/create, Modelfile TEMPLATE) that ember cannot render, so
    that no model is created that would fail every request."""
    why = syntax_error(template)
    if why is None:
        return
    raise InvalidRequestError(
        f"template does not compile ({why}): ember's model templates are Jinja chat templates, "
        "as Hugging Face models ship them (chat_template in tokenizer_config.json), so an "
        "Ollama Go template such as '{{ .Prompt }}' cannot be used; leave the template out to "
        "keep the base model's chat template, or give a Jinja chat template",
        param="template",
    )


def check_parameters(parameters: dict[str, Any]) -> None:
    """400 naming the first parameter of a model (/api/create, Modelfile PARAMETER) that is
    unknown or that requests could not use, so that a bad default fails at create time rather
    than on every later request."""
    for name in parameters:
        if name not in Options.model_fields and name not in IGNORED_OPTIONS:
            raise InvalidRequestError(
                f"unknown parameter '{name}'; see Ollama's Modelfile PARAMETER list",
                param=f"parameters.{name}",
            )
    try:
        opts = Options.model_validate(parameters)
    except ValidationError as e:
        err = validation_message(e)
        raise InvalidRequestError(
            err.message.replace("invalid value for '", "invalid value for parameter '", 1),
            param=f"parameters.{err.param}",
        ) from None
    try:  # the ranges, e.g. top_p <= 1, as a request would meet them
        sampling_params(opts, 0, 1 << 30)
    except InvalidRequestError as e:
        name = (e.param or "").removeprefix("options.")
        raise InvalidRequestError(
            f"invalid parameter: {e.message}", param=f"parameters.{name}" if name else None
        ) from None


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    stream: bool | None = None  # absent or null: stream
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    keep_alive: str | float | None = None
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    # Ollama's default: a prompt longer than the context loses its oldest tokens (generate) or
    # messages, then tokens of the last message (chat), leaving room for the reply (see
    # ollama_prompt.prompt_limit); false answers 400 instead.
    truncate: bool | None = None

    def check_common(self) -> None:
        if not self.model:
            raise InvalidRequestError("model is required", param="model")
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= 20:
            raise InvalidRequestError(
                f"top_logprobs must be in [0, 20], got {self.top_logprobs}", param="top_logprobs"
            )

    @property
    def streaming(self) -> bool:
        return self.stream is not False

    @property
    def structured(self) -> StructuredSpec | None:
        return ollama_format(self.format)

    @property
    def num_logprobs(self) -> int | None:
        """Top alternatives per token (0: the sampled token only); None: no logprobs."""
        if not self.logprobs and not self.top_logprobs:
            return None
        return self.top_logprobs or 0


class GenerateRequest(_Request):
    prompt: str = ""
    suffix: str = ""
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None

    def check(self) -> None:
        self.check_common()
        if self.raw and (self.template or self.system or self.context):
            raise InvalidRequestError(
                "raw mode does not support template, system, or context; leave them out or "
                "set raw to false",
                param="raw",
            )
        if self.images:
            raise InvalidRequestError(
                f"{self.model} does not support images: it is a text-only model; "
                "leave out images or serve a vision model",
                param="images",
            )


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | None = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None

    def for_template(self) -> dict[str, Any]:
        if self.images:
            raise InvalidRequestError(
                "this model does not support images: it is a text-only model", param="messages"
            )
        if self.role not in ("system", "user", "assistant", "tool"):
            raise InvalidRequestError(
                f"invalid message role {self.role!r}: use system, user, assistant or tool",
                param="messages",
            )
        msg: dict[str, Any] = {"role": self.role, "content": self.content or ""}
        if self.tool_calls:
            msg["tool_calls"] = [_template_tool_call(c) for c in self.tool_calls]
        if self.tool_name:
            msg["name"] = self.tool_name
        call_id = (self.model_extra or {}).get("tool_call_id")
        if isinstance(call_id, str) and call_id:
            msg["tool_call_id"] = call_id
        return msg


def with_call_ids(messages: list[dict[str, Any]]) -> None:
    """Give the tool calls and tool results that have no id one (Ollama's clients send none, and
    Mistral's templates refuse a call without 9 alphanumerics): call k of message i gets
    `c` + i + k in 4 digits each; a tool result takes the id of the first call still unanswered
    of its tool_name, else of the first one."""
    pending: list[tuple[str, str]] = []  # (function name, id) of calls not yet answered
    for i, msg in enumerate(messages):
        for k, call in enumerate(msg.get("tool_calls") or []):
            call.setdefault("id", f"c{i % 10_000:04d}{k % 10_000:04d}")
            pending.append((str(call["function"].get("name")), call["id"]))
        if msg["role"] == "tool" and pending:
            at = next((j for j, p in enumerate(pending) if p[0] == msg.get("name")), 0)
            msg.setdefault("tool_call_id", pending.pop(at)[1])


def _template_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    """A tool call as the chat templates read it: {"type", "function": {"name", "arguments"}}
    with arguments an object (Ollama clients send it so)."""
    fn = dict(call.get("function") or {})
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            fn["arguments"] = json.loads(args)
        except json.JSONDecodeError:
            raise InvalidRequestError(
                "tool_calls[].function.arguments must be a JSON object", param="messages"
            ) from None
    out: dict[str, Any] = {"type": "function", "function": fn}
    if isinstance(call.get("id"), str) and call["id"]:
        out["id"] = call["id"]
    return out


class ChatRequest(_Request):
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None

    def check(self) -> None:
        self.check_common()


class ShowRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    name: str = ""  # the field's old name
    verbose: bool = False


def merge_options(model_defaults: dict[str, Any], request: dict[str, Any] | None) -> Options:
    """Ollama's defaults, beneath the model's params.json, beneath the request's options."""
    merged = {**OLLAMA_DEFAULT_OPTIONS, **model_defaults}
    merged.update({k: v for k, v in (request or {}).items() if v is not None})
    try:
        return Options.model_validate(merged)
    except ValidationError as e:  # name the field as the request does: options.<name>
        err = validation_message(e)
        param = f"options.{err.param}" if err.param else "options"
        message = err.message.replace(f"'{err.param}'", f"'{param}'", 1)
        raise InvalidRequestError(message, param=param) from None


def context_length(opts: Options, max_model_len: int) -> int:
    """The request's context in tokens: options.num_ctx, clamped to the server's max_model_len
    (a larger num_ctx cannot grow the KV cache); max_model_len when num_ctx is unset."""
    if opts.num_ctx is not None and opts.num_ctx > 0:
        return min(opts.num_ctx, max_model_len)
    return max_model_len


def sampling_params(
    opts: Options,
    prompt_len: int,
    max_model_len: int,
    *,
    structured: StructuredSpec | None = None,
    logprobs: int | None = None,
) -> SamplingParams:
    """SamplingParams (streaming deltas) for a prompt of `prompt_len` tokens. Prompt and reply
    together stay within context_length() tokens, as in Ollama's runner."""
    limit = context_length(opts, max_model_len)
    if prompt_len >= limit:
        raise InvalidRequestError(
            f"the prompt is {prompt_len} tokens long but the context length is "
            f"{limit} tokens; shorten the prompt",
            param="prompt",
        )
    room = limit - prompt_len
    max_tokens = room if opts.num_predict is None or opts.num_predict <= 0 else opts.num_predict
    stop = [opts.stop] if isinstance(opts.stop, str) else list(opts.stop or [])
    kwargs: dict[str, Any] = {
        "max_tokens": min(max_tokens, room),
        "stop": [s for s in stop if s],
        "seed": opts.seed if opts.seed is not None and opts.seed >= 0 else None,
        "output_kind": OutputKind.DELTA,
        "structured": structured,
        "logprobs": logprobs,
    }
    last_n = opts.repeat_last_n
    if last_n is None and opts.repeat_penalty is not None:
        last_n = OLLAMA_REPEAT_LAST_N
    if last_n is not None:
        # Ollama: 0 disables the penalties, -1 looks back over the whole context.
        window = (opts.num_ctx or max_model_len) if last_n < 0 else last_n
        if window == 0:
            opts = opts.model_copy(
                update={"repeat_penalty": None, "presence_penalty": None, "frequency_penalty": None}
            )
        kwargs["penalty_window"] = window
    for ours, theirs in (
        ("temperature", "temperature"),
        ("top_k", "top_k"),
        ("top_p", "top_p"),
        ("min_p", "min_p"),
        ("repetition_penalty", "repeat_penalty"),
        ("presence_penalty", "presence_penalty"),
        ("frequency_penalty", "frequency_penalty"),
    ):
        value = getattr(opts, theirs)
        if value is not None:
            kwargs[ours] = value
    if kwargs.get("top_k", 0) < 0:
        kwargs["top_k"] = 0  # Ollama: any top_k <= 0 is off
    try:
        return SamplingParams(**kwargs)
    except InvalidRequestError as e:  # name the option as the client sent it
        ours = e.param or ""
        theirs = _CLIENT_NAMES.get(ours, ours)
        message = e.message.replace(ours, theirs) if ours else e.message
        raise InvalidRequestError(message, param=f"options.{theirs}" if theirs else None) from None


_CLIENT_NAMES = {"repetition_penalty": "repeat_penalty", "max_tokens": "num_predict"}


def created_at() -> str:
    """Now as Ollama writes it: RFC 3339, UTC, nanoseconds, e.g. 2024-07-22T20:47:51.147561123Z."""
    ns = time.time_ns()
    whole = datetime.fromtimestamp(ns // 1_000_000_000, tz=timezone.utc)
    return whole.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 1_000_000_000:09d}Z"


def rfc3339(value: Any) -> str:
    """A model's modified time (datetime, epoch seconds or string) as RFC 3339."""
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return dt.isoformat()
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), tz=timezone.utc).isoformat()
    return str(value)


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


def _eval_seconds(out: RequestOutput) -> float:
    """Generation time: first to last token. A reply of one token has no decode step of its
    own, so it gets the time from that token to the end of the request instead."""
    m = out.metrics
    first = m.first_token_time
    if first is None:
        return 0.0
    if m.last_token_time is not None and m.last_token_time > first:
        return m.last_token_time - first
    end = m.finished_time if m.finished_time is not None and m.finished_time > first else None
    return (end if end is not None else time.monotonic()) - first


def done_fields(
    out: RequestOutput, eval_count: int, request_start: float, load_wait_s: float
) -> dict[str, Any]:
    """The statistics of the final chunk. Times are time.monotonic() seconds."""
    m = out.metrics
    reason = out.outputs[0].finish_reason if out.outputs else None
    first_tok = m.first_token_time
    scheduled = m.first_scheduled_time if m.first_scheduled_time is not None else m.arrival_time
    prompt_eval = (first_tok - scheduled) if first_tok is not None else 0.0
    decode = _eval_seconds(out) if eval_count else 0.0
    return {
        "done": True,
        "done_reason": "length" if reason == "length" else "stop",
        "total_duration": _ns(time.monotonic() - request_start),
        "load_duration": _ns(load_wait_s),
        "prompt_eval_count": m.num_prompt_tokens or len(out.prompt_token_ids),
        "prompt_eval_duration": _ns(prompt_eval),
        "eval_count": eval_count,
        # never 0 for a reply: clients divide eval_count by it
        "eval_duration": max(1, _ns(decode)) if eval_count else 0,
    }
