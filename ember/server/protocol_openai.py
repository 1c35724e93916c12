"""OpenAI request bodies as vLLM accepts them (including vLLM's sampling extras) and the
response objects it returns. Unknown request fields are ignored, as vLLM does."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ember.engine.structured import StructuredSpec
from ember.errors import InvalidRequestError
from ember.logprobs import Logprob, PromptLogprobs, chosen, top
from ember.outputs import CompletionOutput
from ember.sampling_params import OutputKind, SamplingParams
from ember.server.formats import vllm_guided

MAX_N = 16  # choices per request; each is an engine request holding an admission slot


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool | None = True  # vLLM's default once stream_options is sent
    continuous_usage_stats: bool | None = False


# OpenAI's reasoning efforts, as the chat and Responses APIs take them.
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None  # None: the served model
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = 1
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None
    # vLLM's extras
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = 0
    ignore_eos: bool | None = False
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool | None = False
    skip_special_tokens: bool | None = True
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    logit_bias: dict[str, float] | None = None  # OpenAI's: token id (as a string) -> bias
    allowed_token_ids: list[int] | None = None
    truncate_prompt_tokens: int | None = None  # keep the prompt's last k tokens; -1: the context
    prompt_logprobs: int | None = None
    # Accepted so that it is refused clearly rather than ignored.
    bad_words: list[str] | None = None

    @property
    def guided(self) -> bool:
        """Whether one of vLLM's guided-decoding fields constrains the output."""
        return self.guided_json is not None or bool(self.guided_regex) or bool(self.guided_choice)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        """Usage on every streamed chunk (vLLM's stream_options.continuous_usage_stats)."""
        options = self.stream_options
        return self.include_usage and bool(options and options.continuous_usage_stats)

    def check_common(self) -> int:
        """Checks every OpenAI request shares; returns the number of choices."""
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError(
                "stream_options can only be set when stream is true", param="stream_options"
            )
        if self.bad_words:
            raise InvalidRequestError(
                "bad_words is not supported; ban the words' tokens with logit_bias -100",
                param="bad_words",
            )
        if self.prompt_logprobs is not None and self.stream:
            raise InvalidRequestError(
                "prompt_logprobs are not available when stream is true", param="prompt_logprobs"
            )
        k = self.truncate_prompt_tokens
        if k is not None and k < 1 and k != -1:
            raise InvalidRequestError(
                f"truncate_prompt_tokens must be -1 or at least 1, got {k}",
                param="truncate_prompt_tokens",
            )
        return self.num_choices()

    def truncated(self, ids: list[int], max_model_len: int) -> list[int]:
        """The prompt's token ids, cut to their last truncate_prompt_tokens (vLLM's)."""
        k = self.truncate_prompt_tokens
        if k is None:
            return ids
        return ids[-(max_model_len if k == -1 else k) :]

    def num_choices(self) -> int:
        n = 1 if self.n is None else self.n
        if not 1 <= n <= MAX_N:
            raise InvalidRequestError(f"n must be in [1, {MAX_N}], got {n}", param="n")
        return n

    def sampling_params(
        self,
        max_tokens: int,
        logprobs: int | None,
        choice: int = 0,
        structured: StructuredSpec | None = None,
        prompt_logprobs: int | None = None,
    ) -> SamplingParams:
        """The params of one choice: n > 1 runs n engine requests, choice i seeded seed + i."""
        kwargs: dict[str, Any] = {
            "max_tokens": max_tokens,
            "prompt_logprobs": self.prompt_logprobs if prompt_logprobs is None else prompt_logprobs,
            "seed": None if self.seed is None else _choice_seed(self.seed, choice),
            "structured": structured
            or vllm_guided(self.guided_json, self.guided_regex, self.guided_choice),
            "logit_bias": self.logit_bias,  # SamplingParams reads the ids in the string keys
            "allowed_token_ids": self.allowed_token_ids,
            "stop": [self.stop] if isinstance(self.stop, str) else list(self.stop or []),
            "stop_token_ids": list(self.stop_token_ids or []),
            "min_tokens": self.min_tokens or 0,
            "ignore_eos": bool(self.ignore_eos),
            "include_stop_str_in_output": bool(self.include_stop_str_in_output),
            "skip_special_tokens": self.skip_special_tokens is not False,
            "logprobs": logprobs,
            "output_kind": OutputKind.DELTA,
        }
        for name in (
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "repetition_penalty",
            "presence_penalty",
            "frequency_penalty",
        ):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        return SamplingParams(**kwargs)


def _choice_seed(seed: int, choice: int) -> int:
    """Choice i of n is seeded seed + i, kept in the 64 bits a seed may span; -1 (random)
    stays random for every choice."""
    if seed == -1:
        return seed
    if choice and seed >= 0:
        return (seed + choice) % 2**64
    return seed + choice


class CompletionRequest(OpenAIRequest):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = 16  # OpenAI's and vLLM's default; null: until the context ends
    logprobs: int | None = None
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = None
    response_format: dict[str, Any] | None = None  # vLLM honours it on completions too
    add_special_tokens: bool = True

    def check(self) -> None:
        n = self.check_common()
        if self.best_of is not None and self.best_of != n:
            raise InvalidRequestError(
                "best_of is not supported: ember returns every sample; use n instead",
                param="best_of",
            )
        if self.max_tokens == 0 and not self.echo:
            raise InvalidRequestError(
                "max_tokens must be at least 1 (0 only with echo, which returns the prompt)",
                param="max_tokens",
            )

    @property
    def echo_only(self) -> bool:
        """echo with max_tokens 0: the prompt (and its logprobs) back, nothing generated."""
        return bool(self.echo) and self.max_tokens == 0

    @property
    def engine_max_tokens(self) -> int | None:
        return 1 if self.echo_only else self.max_tokens  # one token run, then dropped

    @property
    def prompt_logprobs_wanted(self) -> int | None:
        """vLLM's prompt_logprobs, or with echo the completion's logprobs for the prompt too."""
        if self.prompt_logprobs is not None:
            return self.prompt_logprobs
        return self.logprobs if self.echo else None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def for_template(self) -> dict[str, Any]:
        msg = self.model_dump(exclude_none=True)
        if isinstance(msg.get("tool_calls"), list):
            msg["tool_calls"] = [_template_tool_call(c) for c in msg["tool_calls"]]
        content = self.content
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise InvalidRequestError(
                        f"unsupported content part type {part.get('type')!r}: "
                        "this model accepts text parts only",
                        param="messages",
                    )
                texts.append(part["text"])
            content = "\n".join(texts)
        msg["content"] = content or ""
        return msg


def _template_tool_call(call: Any) -> Any:
    """OpenAI sends arguments as a JSON string; chat templates expect an object."""
    fn = call.get("function") if isinstance(call, dict) else None
    if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
        try:
            args = json.loads(fn["arguments"])
        except json.JSONDecodeError:
            raise InvalidRequestError(
                "tool_calls[].function.arguments must be a JSON object string", param="messages"
            ) from None
        return {**call, "function": {**fn, "arguments": args}}
    return call


class ChatCompletionRequest(OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = True
    response_format: dict[str, Any] | None = None
    # vLLM's extras
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    add_special_tokens: bool = False  # vLLM's default: the template writes the BOS
    reasoning_effort: str | None = None

    def check(self) -> None:
        self.check_common()
        if self.reasoning_effort is not None and self.reasoning_effort not in REASONING_EFFORTS:
            raise InvalidRequestError(
                f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}, "
                f"got {self.reasoning_effort!r}",
                param="reasoning_effort",
            )
        if self.top_logprobs is not None:
            if not 0 <= self.top_logprobs <= 20:
                raise InvalidRequestError(
                    f"top_logprobs must be in [0, 20], got {self.top_logprobs}",
                    param="top_logprobs",
                )
            if self.top_logprobs and not self.logprobs:
                raise InvalidRequestError(
                    "top_logprobs needs logprobs set to true", param="top_logprobs"
                )
        for tool in self.tools or []:
            _check_tool(tool)
        if self.tool_choice not in (None, "none") and not self.tools:
            raise InvalidRequestError(
                "tool_choice needs tools: send the functions the model may call in tools",
                param="tool_choice",
            )

    @property
    def template_kwargs(self) -> dict[str, Any] | None:
        """chat_template_kwargs with reasoning_effort: as vLLM, the template sees it as
        `reasoning_effort` (gpt-oss's reads it); "none" turns thinking off, as Ollama maps it to
        `think` false (Qwen3's enable_thinking). chat_template_kwargs sent by the client win."""
        kwargs = self.chat_template_kwargs
        effort = self.reasoning_effort
        if effort is None:
            return kwargs
        off = {"enable_thinking": False} if effort == "none" else {}
        return {"reasoning_effort": effort, **off, **(kwargs or {})}

    @property
    def forced_tool(self) -> str | None:
        """The tool named by tool_choice {"type": "function", "function": {"name"}}, checked."""
        choice = self.tool_choice
        if not isinstance(choice, dict):
            return None
        name = (choice.get("function") or {}).get("name")
        names = [str((t.get("function") or {}).get("name")) for t in self.tools or []]
        if not isinstance(name, str):
            raise InvalidRequestError(
                'tool_choice must name a function: {"type": "function", "function": {"name": '
                f'...}}}} with one of {names}, or be "auto", "required" or "none"',
                param="tool_choice",
            )
        if name not in names:
            raise InvalidRequestError(
                f"tool_choice names tool {name!r}, which is not in tools {names}",
                param="tool_choice",
            )
        return name

    @property
    def tool_mode(self) -> str:
        """ "none", "auto", "required" or "named"."""
        choice = self.tool_choice
        if isinstance(choice, dict):
            return "named"
        if choice in (None, "auto"):
            return "auto" if self.tools else "none"
        if choice not in ("none", "required"):
            raise InvalidRequestError(
                f"tool_choice must be 'none', 'auto', 'required' or a named function, "
                f"got {choice!r}",
                param="tool_choice",
            )
        if choice == "required" and not self.tools:
            raise InvalidRequestError("tool_choice 'required' needs tools", param="tool_choice")
        return choice

    @property
    def requested_max_tokens(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


def _check_tool(tool: Any) -> None:
    """A tool as OpenAI defines one: {"type": "function", "function": {"name", "parameters"}}."""
    fn = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise InvalidRequestError(
            'each tool must be {"type": "function", "function": {...}}', param="tools"
        )
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise InvalidRequestError(
            "each tool needs function.name, a non-empty string", param="tools"
        )
    parameters = fn.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidRequestError(
            f"tool {fn['name']!r}: function.parameters must be a JSON Schema object",
            param="tools",
        )


def fit_max_tokens(requested: int | None, prompt_len: int, max_model_len: int) -> int:
    """max_tokens checked against the context length, worded as vLLM words it."""
    if prompt_len >= max_model_len:
        raise InvalidRequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"request has {prompt_len} input tokens. Please reduce the length of the input.",
            param="prompt",
        )
    room = max_model_len - prompt_len
    if requested is None:
        return room
    if requested > room:
        raise InvalidRequestError(
            f"'max_tokens' or 'max_completion_tokens' is too large: {requested}. This model's "
            f"maximum context length is {max_model_len} tokens and your request has "
            f"{prompt_len} input tokens ({requested} > {max_model_len} - {prompt_len}).",
            param="max_tokens",
        )
    return requested


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now_s() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


Decode = Callable[[int], str]


def _token_text(token_id: int, lp: Logprob, decode: Decode) -> str:
    return lp.decoded_token if lp.decoded_token is not None else decode(token_id)


def completion_logprobs(
    out: CompletionOutput, decode: Decode, text_offset: int
) -> tuple[dict[str, Any] | None, int]:
    """The legacy completions `logprobs` object for the tokens of `out` (a delta) whose first
    token starts at `text_offset`, and the offset just past its last token."""
    if out.logprobs is None:
        return None, text_offset
    entries = [(chosen(position)[0], position) for position in out.logprobs]
    return _legacy_logprobs(entries, decode, text_offset)


def _legacy_logprobs(
    entries: Sequence[tuple[int, dict[int, Logprob] | None]], decode: Decode, text_offset: int
) -> tuple[dict[str, Any], int]:
    """The legacy `logprobs` object for (token id, its position's logprobs; None for a prompt's
    first token, which nothing predicts), and the text offset just past the last token. Each
    top_logprobs entry holds the token itself and the top ones (up to logprobs + 1, as
    OpenAI): the whole position."""
    tokens: list[str] = []
    token_lps: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    offset = text_offset
    for token_id, position in entries:
        offsets.append(offset)
        if position is None:
            text = decode(token_id)
            token_lps.append(None)
            tops.append(None)
        else:
            own = position[token_id]
            text = _token_text(token_id, own, decode)
            token_lps.append(own.logprob)
            top_lps: dict[str, float] = {}
            for t, lp in position.items():  # the chosen token first
                top_lps.setdefault(_token_text(t, lp, decode), lp.logprob)
            tops.append(top_lps)
        tokens.append(text)
        offset += len(text)
    lps = {"text_offset": offsets, "token_logprobs": token_lps, "tokens": tokens}
    return {**lps, "top_logprobs": tops}, offset


def chat_logprobs(out: CompletionOutput, decode: Decode, k: int) -> dict[str, Any] | None:
    """The chat `logprobs` object ({"content": [...]}) for the tokens of `out` (a delta), with
    the `k` (top_logprobs) likeliest tokens of each position."""
    if out.logprobs is None:
        return None

    def item(token_id: int, lp: Logprob) -> dict[str, Any]:
        text = _token_text(token_id, lp, decode)
        return {"token": text, "logprob": lp.logprob, "bytes": list(text.encode())}

    content = [
        {**item(*chosen(position)), "top_logprobs": [item(*e) for e in top(position, k)]}
        for position in out.logprobs
    ]
    return {"content": content}


def prompt_logprobs_json(lps: PromptLogprobs | None) -> list[dict[str, Any] | None] | None:
    """vLLM's `prompt_logprobs`: None for the first token, then {token id: {logprob, rank,
    decoded_token}} for each later one, its own token first."""
    if lps is None:
        return None
    return [
        None
        if position is None
        else {
            str(t): {"logprob": lp.logprob, "rank": lp.rank, "decoded_token": lp.decoded_token}
            for t, lp in position.items()
        }
        for position in lps
    ]


def echo_logprobs(
    lps: PromptLogprobs, prompt_ids: list[int], decode: Decode
) -> tuple[dict[str, Any], int]:
    """The legacy completions `logprobs` object for an echoed prompt (its first token has no
    logprob), and the text offset just past it, where the completion's tokens go on."""
    return _legacy_logprobs(list(zip(prompt_ids, lps, strict=True)), decode, 0)


def join_logprobs(first: dict[str, Any], then: dict[str, Any] | None) -> dict[str, Any]:
    """Two legacy `logprobs` objects, one after the other."""
    if then is None:
        return first
    return {key: first[key] + then[key] for key in first}
