"""/v1/completions as vLLM serves it: a prompt that is a string, a list of strings, a list of
token ids or a list of token-id lists; `n` choices per prompt (choice index prompt * n + j);
`echo` (with logprobs, the prompt's too; with max_tokens 0, only the prompt, as scoring tools
such as lm-evaluation-harness ask); `suffix` for fill-in-the-middle models; `best_of` refused."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ember.errors import InvalidRequestError
from ember.outputs import CompletionOutput, RequestOutput
from ember.server.context import Prepared, get_context, read_json
from ember.server.formats import openai_response_format
from ember.server.ollama_prompt import fim_prompt
from ember.server.openai_common import Prepare, sse_response, start_choices
from ember.server.protocol_openai import (
    CompletionRequest,
    completion_logprobs,
    echo_logprobs,
    fit_max_tokens,
    join_logprobs,
    new_id,
    now_s,
    prompt_logprobs_json,
    usage,
)

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine

router = APIRouter()

MAX_PROMPTS = 64


def _prompts(prompt: str | list[Any]) -> list[str | list[int]]:
    """The batch: strings and token-id lists, each checked non-empty."""
    if isinstance(prompt, str) or (prompt and all(isinstance(t, int) for t in prompt)):
        batch: list[Any] = [prompt]
    else:
        batch = list(prompt)
    if not batch or len(batch) > MAX_PROMPTS:
        raise InvalidRequestError(
            f"prompt must hold 1 to {MAX_PROMPTS} prompts, got {len(batch)}", param="prompt"
        )
    for p in batch:
        if not p:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        if isinstance(p, list) and not all(isinstance(t, int) for t in p):
            raise InvalidRequestError(
                "prompt must be a string, a list of strings, a list of token ids or a list "
                "of token-id lists",
                param="prompt",
            )
    return batch


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    ctx = get_context(request)
    body = await read_json(request, CompletionRequest)
    body.check()
    ctx.served.require(body.model)
    batch = _prompts(body.prompt)
    n = body.num_choices()
    model = body.model or ctx.served.name  # the name the client sent, as vLLM echoes it
    structured = openai_response_format(body.response_format)

    def prepare_for(prompt: str | list[int], choice: int) -> Prepare:
        def prepare(engine: AsyncEngine) -> Prepared:
            tok = engine.tokenizer
            text = prompt if isinstance(prompt, str) else None
            if body.suffix:
                if text is None:
                    raise InvalidRequestError("suffix needs a text prompt", param="suffix")
                text = fim_prompt(tok, text, body.suffix, model)
            if isinstance(text, str):
                ids = tok.encode(text, add_special_tokens=body.add_special_tokens)
            else:
                ids = [int(t) for t in prompt]
            ids = body.truncated(ids, engine.max_model_len)
            max_tokens = fit_max_tokens(body.engine_max_tokens, len(ids), engine.max_model_len)
            params = body.sampling_params(
                max_tokens, body.logprobs, choice, structured, body.prompt_logprobs_wanted
            )
            return Prepared(ids, params, text)

        return prepare

    prepares = [prepare_for(p, j) for p in batch for j in range(n)]
    rid = new_id("cmpl")
    choices = await start_choices(ctx, request, rid, prepares)
    base = {"id": rid, "object": "text_completion", "created": now_s(), "model": model}
    offsets = [0] * len(prepares)
    echoed = [False] * len(prepares)

    def echo_text(i: int) -> str:
        if not body.echo or echoed[i]:
            return ""
        echoed[i] = True
        p = batch[i // n]
        return p if isinstance(p, str) else choices.decode_ids(p)

    def choice(i: int, delta: CompletionOutput, finished: bool) -> dict[str, Any]:
        if body.echo_only:
            delta = _nothing_generated(delta)
        echo = echo_text(i)
        prompt_lps = choices.prompt_logprobs[i]
        lead = None
        if echo and body.logprobs is not None and prompt_lps is not None:
            ids = choices.prepared[i].prompt_token_ids
            lead, offsets[i] = echo_logprobs(prompt_lps, ids, choices.decode)
        # Offsets follow the tokens' text, which runs ahead of the text a stream has sent
        # while a possible stop string is held back.
        lps, offsets[i] = completion_logprobs(delta, choices.decode, offsets[i])
        out = {
            "index": i,
            "text": echo + delta.text,
            "logprobs": lps if lead is None else join_logprobs(lead, lps),
            "finish_reason": delta.finish_reason if finished else None,
            "stop_reason": delta.stop_reason if finished else None,
        }
        if body.prompt_logprobs is not None:
            out["prompt_logprobs"] = prompt_logprobs_json(prompt_lps)
        return out

    prompt_tokens = choices.prompt_tokens(per_prompt=n)
    if not body.stream:
        merged = await choices.collect(request)
        return JSONResponse(
            {
                **base,
                "choices": [choice(i, m, True) for i, m in enumerate(merged)],
                "usage": usage(
                    prompt_tokens, 0 if body.echo_only else sum(len(m.token_ids) for m in merged)
                ),
            }
        )

    def events(i: int, out: RequestOutput) -> list[dict[str, Any]]:
        delta = out.outputs[0]
        quiet = not delta.text and not delta.logprobs and (echoed[i] or not body.echo)
        if quiet and not out.finished:  # nothing to say yet: a partial character, say
            return []
        return [{**base, "choices": [choice(i, delta, out.finished)]}]

    return sse_response(choices, base, prompt_tokens, body, events, not body.echo_only)


def _nothing_generated(delta: CompletionOutput) -> CompletionOutput:
    """echo with max_tokens 0: the token run to get the prompt's logprobs is left out."""
    return CompletionOutput(
        index=0,
        text="",
        token_ids=[],
        finish_reason="length" if delta.finish_reason else None,
        logprobs=[] if delta.logprobs is not None else None,
    )
