"""/v1/chat/completions as vLLM serves it: `n` choices, logprobs, `response_format` and vLLM's
guided_json / guided_regex through constrained decoding, and tools:

- tool_choice "none": tools are left out of the prompt, the reply is text;
- "auto" (the default with tools): tool calls are parsed from the output (Hermes/Qwen
  `<tool_call>` blocks or Llama 3.x JSON);
- "required" / a named function: the output is constrained to the calls' JSON (an array of
  {"name", "parameters"}, or the named function's arguments), as vLLM does.

Streaming with "auto", text streams and a reply that opens like a tool call is held back, then
sent as one tool_calls delta; with a forced call the whole reply is held and sent that way.

With `ember serve --reasoning-parser`, the reply's <think>...</think> goes into `reasoning` (and
its old name `reasoning_content`), streamed first; tool calls are parsed from the content after
it. Output constrained by a grammar (response_format, guided_*, forced tools) is left whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ember.engine.structured import StructuredSpec
from ember.errors import InvalidRequestError
from ember.outputs import CompletionOutput, RequestOutput
from ember.server.context import Prepared, get_context, read_json
from ember.server.formats import forced_call_grammar, openai_response_format
from ember.server.openai_common import Prepare, sse_response, start_choices
from ember.server.protocol_openai import (
    ChatCompletionRequest,
    chat_logprobs,
    fit_max_tokens,
    new_id,
    now_s,
    prompt_logprobs_json,
    usage,
)
from ember.tokenizer.chat_prompt import render_chat
from ember.tokenizer.reasoning import (
    Start,
    ThinkSplitter,
    reply_start,
    split_piece,
    split_reasoning,
)
from ember.tokenizer.tool_calls import (
    ToolCall,
    ToolCallGate,
    mistral_calls,
    new_call_id,
    read_reply,
    tool_names,
)

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine
    from ember.sampling_params import SamplingParams
    from ember.tokenizer.tokenizer import Tokenizer

router = APIRouter()


def _structured(body: ChatCompletionRequest, mode: str) -> StructuredSpec | None:
    response_format = openai_response_format(body.response_format)
    forced = forced_call_grammar(mode, body.tools, body.forced_tool, body.parallel_tool_calls)
    if forced is not None and response_format is not None:
        raise InvalidRequestError(
            "response_format cannot be combined with a forced tool_choice",
            param="response_format",
        )
    return forced or response_format


@dataclass(slots=True)
class _Reply:
    """How a choice's text becomes the assistant message."""

    mode: str  # tool_mode: "none", "auto", "required" or "named"
    forced: str | None  # the named tool
    names: frozenset[str]  # the offered tools' names
    mistral: bool = False  # Mistral's call format: ids of 9 alphanumerics
    reasoning: bool = False  # --reasoning-parser is on

    def calls(self, calls: list[ToolCall]) -> list[dict[str, Any]]:
        return [
            {
                "id": c.id or new_call_id(self.mistral),
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for c in calls
        ]


def _reasoning_fields(reasoning: str | None) -> dict[str, Any]:
    """vLLM's field and its older name, for clients of either version."""
    return {"reasoning": reasoning, "reasoning_content": reasoning}


def _message(text: str, reply: _Reply, start: Start | None = None) -> tuple[dict[str, Any], bool]:
    """The assistant message for a whole choice, and whether it holds tool calls. `start`:
    where reasoning starts, None to leave the text whole."""
    reasoning = None
    if start is not None:
        reasoning, text = split_reasoning(text, start)
    msg, has_calls = _content_message(text, reply)
    if reply.reasoning:
        msg.update(_reasoning_fields(reasoning or None))
        msg["content"] = msg["content"] or None
    return msg, has_calls


def _content_message(text: str, reply: _Reply) -> tuple[dict[str, Any], bool]:
    if reply.forced is not None:  # the output is the named function's arguments as written
        call = reply.calls([ToolCall(reply.forced, {})])[0]
        call["function"]["arguments"] = text  # even cut short by max_tokens, as vLLM
        return {"role": "assistant", "content": "", "tool_calls": [call]}, True
    parsed = read_reply(text, reply.mode, None, reply.names)
    calls = parsed.tool_calls
    content = (parsed.content or None) if calls else text
    msg: dict[str, Any] = {"role": "assistant", "content": content, "tool_calls": []}
    if calls:
        msg["tool_calls"] = reply.calls(calls)
    return msg, bool(calls)


def _finish(out: CompletionOutput, has_calls: bool, mode: str) -> str | None:
    if has_calls and mode != "named" and out.finish_reason == "stop":
        return "tool_calls"
    return out.finish_reason


def chat_prompt(
    engine: AsyncEngine,
    body: ChatCompletionRequest,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
) -> tuple[str, list[int]]:
    """The request's prompt text and its token ids, truncated as the request asks."""
    tok = engine.tokenizer
    text = render_chat(
        tok,
        messages,
        add_generation_prompt=body.add_generation_prompt,
        continue_final_message=body.continue_final_message,
        tools=tools,
        template_kwargs=body.template_kwargs,
    )
    ids = tok.encode(text, add_special_tokens=body.add_special_tokens)
    return text, body.truncated(ids, engine.max_model_len)


def keep_call_markup(params: SamplingParams, mode: str, tok: Tokenizer) -> None:
    """With tools offered ("auto"), a Mistral model's [TOOL_CALLS] stays in the text to be
    parsed, as vLLM keeps it."""
    if mode == "auto" and mistral_calls(tok):
        params.skip_special_tokens = False


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    ctx = get_context(request)
    body = await read_json(request, ChatCompletionRequest)
    body.check()
    mode = body.tool_mode
    forced = body.forced_tool if mode == "named" else None
    structured = _structured(body, mode)
    ctx.served.require(body.model)
    messages = [m.for_template() for m in body.messages]
    tools = body.tools if mode != "none" else None
    reply = _Reply(
        mode, forced, tool_names(tools), reasoning=ctx.config.reasoning_parser is not None
    )

    def prepare_for(choice: int) -> Prepare:
        def prepare(engine: AsyncEngine) -> Prepared:
            text, ids = chat_prompt(engine, body, messages, tools)
            max_tokens = fit_max_tokens(body.requested_max_tokens, len(ids), engine.max_model_len)
            params = body.sampling_params(max_tokens, body.num_logprobs, choice, structured)
            keep_call_markup(params, mode, engine.tokenizer)
            return Prepared(ids, params, text)

        return prepare

    rid = new_id("chatcmpl")
    choices = await start_choices(
        ctx, request, rid, [prepare_for(j) for j in range(body.num_choices())]
    )
    created = now_s()
    model = body.model or ctx.served.name  # the name the client sent, as vLLM echoes it
    prompt_tokens = choices.prompt_tokens(per_prompt=len(choices.gens))
    tok = choices.engine.tokenizer
    reply.mistral = mistral_calls(tok)
    constrained = structured is not None or body.guided
    starts = [
        reply_start(
            ctx.config.reasoning_parser,
            tok.chat_template,
            constrained,
            body.template_kwargs,
            p.prompt,
        )
        for p in choices.prepared
    ]
    top_logprobs = body.num_logprobs or 0

    if not body.stream:
        merged = await choices.collect(request)
        out_choices = []
        for i, m in enumerate(merged):
            msg, has_calls = _message(m.text, reply, starts[i])
            out_choices.append(
                {
                    "index": i,
                    "message": msg,
                    "logprobs": chat_logprobs(m, choices.decode, top_logprobs),
                    "finish_reason": _finish(m, has_calls, mode),
                    "stop_reason": m.stop_reason,
                }
            )
        response = {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": out_choices,
            "usage": usage(prompt_tokens, sum(len(m.token_ids) for m in merged)),
        }
        if body.prompt_logprobs is not None:  # the choices share one prompt
            response["prompt_logprobs"] = prompt_logprobs_json(choices.prompt_logprobs[0])
        return JSONResponse(response)

    base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
    opened = [False] * len(choices.gens)
    full = [""] * len(choices.gens)
    # "auto": stream text, hold a reply that opens like a tool call; forced calls: hold all.
    gates = [ToolCallGate() for _ in choices.gens] if mode == "auto" else None
    splitters = [ThinkSplitter(s) if s is not None else None for s in starts]

    def events(i: int, out: RequestOutput) -> list[dict[str, Any]]:
        delta = out.outputs[0]
        chunks = []
        if not opened[i]:  # vLLM opens every chat stream with the role
            opened[i] = True
            chunks.append(_chunk(base, i, {"role": "assistant", "content": ""}, None, None))
        lps = chat_logprobs(delta, choices.decode, top_logprobs)
        reasoning, text = split_piece(splitters[i], delta.text, out.finished)
        think = _reasoning_fields(reasoning) if reasoning else {}
        if mode == "none":
            if text or reasoning or delta.logprobs or out.finished:
                content = {"content": text} if text else {}
                end = (delta.finish_reason, delta.stop_reason) if out.finished else None
                chunks.append(_chunk(base, i, {**think, **content}, lps, end))
            return chunks
        full[i] += text
        now = gates[i].feed(text) if gates is not None else ""
        if not out.finished:
            if now or lps or reasoning:
                content = {"content": now} if now else {}
                chunks.append(_chunk(base, i, {**think, **content}, lps, None))
            return chunks
        msg, has_calls = _content_message(full[i], reply)
        streamed = gates is not None and gates[i].mode == "text"
        rest = now + (gates[i].held() if gates is not None else "")
        body_delta: dict[str, Any] = dict(think)
        if has_calls:
            if streamed and now:
                body_delta["content"] = now
            elif msg["content"] and not streamed:
                body_delta["content"] = msg["content"]
            body_delta["tool_calls"] = [
                {"index": k, **call} for k, call in enumerate(msg["tool_calls"])
            ]
        elif streamed or gates is not None:
            if rest:
                body_delta["content"] = rest
        elif msg["content"]:
            body_delta["content"] = msg["content"]
        finish = _finish(delta, has_calls, mode)
        chunks.append(_chunk(base, i, body_delta, lps, (finish, delta.stop_reason)))
        return chunks

    return sse_response(choices, base, prompt_tokens, body, events)


def _chunk(
    base: dict[str, Any],
    index: int,
    delta: dict[str, Any],
    logprobs: dict[str, Any] | None,
    finished: tuple[str | None, int | str | None] | None,
) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": index,
        "delta": delta,
        "logprobs": logprobs,
        "finish_reason": finished[0] if finished else None,
    }
    if finished is not None:
        choice["stop_reason"] = finished[1]
    return {**base, "choices": [choice]}
