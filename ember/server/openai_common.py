"""What the OpenAI routes share: starting one engine request per choice (n, batched prompts),
merging their outputs, and SSE streams that end in `data: [DONE]`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import Response

from ember.errors import EmberError, InvalidRequestError, ServerBusyError
from ember.logprobs import PromptLogprobs
from ember.outputs import CompletionOutput, RequestOutput
from ember.server.context import Prepared, ServerContext
from ember.server.errors import BUSY_MESSAGE, error_response
from ember.server.protocol_openai import OpenAIRequest, usage
from ember.server.streaming import SSE_DONE, Generation, OwnedStreamingResponse, sse_event

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine

log = logging.getLogger("ember.server")

Prepare = Callable[["AsyncEngine"], Prepared]


# A request the engine aborted (a fault, or a drain past its deadline) while it was answered.
ABORTED = "the engine aborted the request before it finished; send it again"


class Choices:
    """The engine requests behind one response, one per choice, in choice order."""

    def __init__(self, gens: list[Generation], prepared: list[Prepared]) -> None:
        self.gens = gens
        self.prepared = prepared
        # Each choice's prompt logprobs, once its first output has brought them.
        self.prompt_logprobs: list[PromptLogprobs | None] = [None] * len(gens)

    @property
    def engine(self) -> AsyncEngine:
        return self.gens[0].engine

    def decode(self, token_id: int) -> str:
        return self.engine.tokenizer.decode([token_id])

    def decode_ids(self, token_ids: list[int]) -> str:
        return self.engine.tokenizer.decode(token_ids)

    def prompt_tokens(self, per_prompt: int = 1) -> int:
        """Prompt tokens counted once per prompt (n choices of a prompt share it)."""
        return sum(len(p.prompt_token_ids) for p in self.prepared[::per_prompt])

    async def aclose(self) -> None:
        for gen in self.gens:
            await gen.aclose()

    async def collect(self, request: Request) -> list[CompletionOutput]:
        """Each choice's whole output."""
        try:
            outs = await asyncio.gather(*(g.collect(request) for g in self.gens))
        finally:
            await self.aclose()
        for i, choice_outs in enumerate(outs):
            for out in choice_outs:
                self._note(i, out)
        return [merge(o) for o in outs]

    def _note(self, i: int, out: RequestOutput) -> None:
        if out.prompt_logprobs is not None:
            self.prompt_logprobs[i] = out.prompt_logprobs

    async def stream(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(choice index, delta) as they come from all choices."""
        if len(self.gens) == 1:
            async for out in self.gens[0]:
                self._note(0, out)
                yield 0, out
            return
        queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

        async def pump(i: int, gen: Generation) -> None:
            try:
                async for out in gen:
                    await queue.put((i, out))
                await queue.put((i, None))
            except BaseException as e:
                await queue.put((i, e))

        tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(self.gens)]
        try:
            running = len(tasks)
            while running:
                i, item = await queue.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    self._note(i, item)
                    yield i, item
        finally:
            for t in tasks:
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t


async def start_choices(
    ctx: ServerContext, request: Request, request_id: str, prepares: list[Prepare]
) -> Choices:
    """Start one engine request per `prepares` entry (ids `request_id-i` past the first). A
    request needs room for all of them: one that could never fit is a 400, and one that does
    not fit now a 503 before any of its choices starts (none is prefilled, then aborted)."""
    need, admission = len(prepares), ctx.admission
    if need > admission.limit:
        raise InvalidRequestError(
            f"this request asks for {need} completions (n times the prompts), but the server "
            f"runs at most {admission.limit} at once (--num-parallel plus --max-queue); lower "
            "n or send the prompts in several requests",
            param="n",
        )
    if need > 1 and admission.in_flight + need > admission.limit:
        raise ServerBusyError(BUSY_MESSAGE)
    gens: list[Generation] = []
    prepared: list[Prepared] = []
    try:
        for i, prepare in enumerate(prepares):
            rid = request_id if i == 0 else f"{request_id}-{i}"
            gen, prep, _ = await ctx.start_generation(request, rid, prepare)
            gens.append(gen)
            prepared.append(prep)
    except BaseException:
        for gen in gens:
            await gen.aclose()
        raise
    return Choices(gens, prepared)


def merge(outs: list[RequestOutput]) -> CompletionOutput:
    """Join the deltas of one request into one CompletionOutput."""
    last = outs[-1].outputs[0]
    logprobs = None
    if any(o.outputs[0].logprobs is not None for o in outs):
        logprobs = [lp for o in outs for lp in (o.outputs[0].logprobs or [])]
    return CompletionOutput(
        index=0,
        text="".join(o.outputs[0].text for o in outs),
        token_ids=[t for o in outs for t in o.outputs[0].token_ids],
        finish_reason=last.finish_reason,
        stop_reason=last.stop_reason,
        logprobs=logprobs,
        cumulative_logprob=last.cumulative_logprob,
    )


Events = Callable[[int, RequestOutput], list[dict[str, Any]]]


def sse_response(
    choices: Choices,
    base: dict[str, Any],
    prompt_tokens: int,
    request: OpenAIRequest,
    events: Events,
    generated: bool = True,
) -> Response:
    """The SSE stream of `events` for each choice's deltas; with stream_options' include_usage
    a last chunk with the usage, and with continuous_usage_stats the usage so far on each.
    `generated` False: the tokens run are not the reply's (echo with max_tokens 0)."""
    include_usage, continuous = request.include_usage, request.continuous_usage

    async def body() -> AsyncIterator[str]:
        completion_tokens = 0
        try:
            async for i, out in choices.stream():
                completion_tokens += len(out.outputs[0].token_ids) if generated else 0
                for event in events(i, out):
                    if continuous:
                        event["usage"] = usage(prompt_tokens, completion_tokens)
                    yield sse_event(event)
            if include_usage:
                yield sse_event(
                    {**base, "choices": [], "usage": usage(prompt_tokens, completion_tokens)}
                )
        except EmberError as e:  # headers are sent; report in the stream as vLLM does
            yield sse_error(e.status_code, e.message, e.param)
        except Exception as e:
            log.exception("error while streaming %s", base.get("id"))
            yield sse_error(500, f"internal error: {e}", None)
        yield SSE_DONE

    return OwnedStreamingResponse(body(), choices.aclose, "text/event-stream")


def sse_error(status: int, message: str, param: str | None) -> str:
    err = error_response("/v1/", status, message, param)
    return f"data: {bytes(err.body).decode()}\n\n"
