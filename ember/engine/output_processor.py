"""From the core's new tokens to RequestOutputs: detokenize, cut at stop strings, time.

Runs on the API side of the engine (the server's engine thread, or the offline LLM). A stop
string ends a request here, so the core is told to abort it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ember.engine.logprobs import PositionLogprobs, to_dict
from ember.engine.messages import EngineCoreOutput
from ember.logprobs import Logprob, PromptLogprobs, SampleLogprobs
from ember.outputs import CompletionOutput, RequestMetrics, RequestOutput
from ember.sampling_params import OutputKind, SamplingParams
from ember.tokenizer import IncrementalDetokenizer, Tokenizer


@dataclass(slots=True, eq=False)
class RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    detok: IncrementalDetokenizer
    metrics: RequestMetrics
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: SampleLogprobs | None = None
    cumulative_logprob: float = 0.0  # of the sampled tokens
    prompt_logprobs: PromptLogprobs | None = None
    sent_text: int = 0  # characters of text already handed out (DELTA)
    sent_tokens: int = 0
    sent_logprobs: int = 0
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    max_stop_len: int = field(init=False)  # read per token: computed once

    def __post_init__(self) -> None:
        self.max_stop_len = max((len(s) for s in self.params.stop), default=0)


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.states: dict[str, RequestState] = {}
        # Tokens handed to live requests (not those the core ran past a stop string before
        # its abort arrived): vLLM's generation_tokens counts these.
        self.generation_tokens_total = 0

    def add(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        arrival_time: float,
    ) -> None:
        self.states[request_id] = RequestState(
            request_id=request_id,
            prompt=prompt,
            prompt_token_ids=prompt_token_ids,
            params=params,
            detok=IncrementalDetokenizer(self.tokenizer, params.skip_special_tokens),
            metrics=RequestMetrics(
                arrival_time=arrival_time, num_prompt_tokens=len(prompt_token_ids)
            ),
            logprobs=[] if params.logprobs is not None else None,
        )

    def abort(self, request_id: str) -> RequestOutput | None:
        """Forget a request; returns its final output (finish_reason "abort") if it was live."""
        state = self.states.pop(request_id, None)
        if state is None:
            return None
        state.finish_reason = "abort"
        state.metrics.finished_time = time.monotonic()
        return self._make_output(state, finished=True)

    def process(self, outputs: list[EngineCoreOutput]) -> tuple[list[RequestOutput], list[str]]:
        """Returns the outputs to hand out and the ids the core must abort (stop strings)."""
        now = time.monotonic()
        results: list[RequestOutput] = []
        to_abort: list[str] = []
        for out in outputs:
            state = self.states.get(out.request_id)
            if state is None:
                continue
            m = state.metrics
            if m.first_token_time is None:
                m.first_token_time = now
                m.first_scheduled_time = out.first_scheduled_time
                m.num_cached_tokens = out.num_cached_tokens
            m.last_token_time = now
            m.num_generation_tokens += len(out.new_token_ids)
            self.generation_tokens_total += len(out.new_token_ids)
            state.token_ids += out.new_token_ids
            if state.logprobs is not None and out.new_logprobs:
                state.logprobs += self._as_dicts(out.new_logprobs, state.params)
                state.cumulative_logprob += sum(p.logprobs[0] for p in out.new_logprobs)
            if out.prompt_logprobs is not None:
                state.prompt_logprobs = [None, *self._as_dicts(out.prompt_logprobs, state.params)]
            finished = out.finish_reason is not None
            new_text = ""
            if state.params.detokenize:
                new_text = state.detok.add(_text_tokens(out, state.params))
                if finished:
                    new_text += state.detok.flush()
            if self._append_text(state, new_text):
                finished = True
                if out.finish_reason is None:
                    to_abort.append(out.request_id)
            elif finished:
                state.finish_reason = out.finish_reason
                state.stop_reason = out.stop_reason
            if finished:
                m.finished_time = now
                del self.states[out.request_id]
            if finished or state.params.output_kind != OutputKind.FINAL_ONLY:
                results.append(self._make_output(state, finished))
        return results, to_abort

    def _as_dicts(
        self, positions: list[PositionLogprobs], params: SamplingParams
    ) -> list[dict[int, Logprob]]:
        """vLLM's shape, each token's text decoded alone (special tokens too), as vLLM does;
        no text when the request asked for none."""
        decode = self._decode_one if params.detokenize else None
        return [to_dict(p, decode) for p in positions]

    def _decode_one(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _append_text(self, state: RequestState, new_text: str) -> bool:
        """Add text; True if a stop string ended the request (the text is then cut there)."""
        if not new_text:
            return False
        start = max(0, len(state.text) - state.max_stop_len + 1)
        state.text += new_text
        if not state.params.stop or len(state.token_ids) <= state.params.min_tokens:
            return False  # as vLLM: stop strings count only past min_tokens
        hit: tuple[int, str] | None = None
        for s in state.params.stop:
            i = state.text.find(s, start)
            if i >= 0 and (hit is None or i < hit[0]):
                hit = (i, s)
        if hit is None:
            return False
        i, s = hit
        state.text = (
            state.text[: i + len(s)] if state.params.include_stop_str_in_output else state.text[:i]
        )
        state.finish_reason = "stop"
        state.stop_reason = s
        return True

    def _make_output(self, state: RequestState, finished: bool) -> RequestOutput:
        text_end = len(state.text)
        if not finished and state.params.stop:
            # Hold back what could be the start of a stop string.
            text_end = max(state.sent_text, text_end - state.max_stop_len + 1)
        if state.params.output_kind == OutputKind.DELTA:
            text = state.text[state.sent_text : text_end]
            token_ids = state.token_ids[state.sent_tokens :]
            logprobs = state.logprobs[state.sent_logprobs :] if state.logprobs is not None else None
        else:
            text = state.text[:text_end]
            token_ids = list(state.token_ids)
            logprobs = list(state.logprobs) if state.logprobs is not None else None
        state.sent_text = text_end
        state.sent_tokens = len(state.token_ids)
        state.sent_logprobs = len(state.logprobs) if state.logprobs is not None else 0
        completion = CompletionOutput(
            index=0,
            text=text,
            token_ids=token_ids,
            finish_reason=state.finish_reason if finished else None,
            stop_reason=state.stop_reason if finished else None,
            logprobs=logprobs,
            cumulative_logprob=state.cumulative_logprob if state.logprobs is not None else None,
        )
        return RequestOutput(
            request_id=state.request_id,
            prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids,
            outputs=[completion],
            finished=finished,
            metrics=state.metrics,
            num_cached_tokens=state.metrics.num_cached_tokens,
            prompt_logprobs=state.prompt_logprobs,
        )


def _text_tokens(out: EngineCoreOutput, params: SamplingParams) -> list[int]:
    """The new tokens whose text is output: all but the token that stopped the request (EOS or
    one of stop_token_ids), unless include_stop_str_in_output, as vLLM does."""
    ids = out.new_token_ids
    if out.finish_reason == "stop" and ids and not params.include_stop_str_in_output:
        return ids[:-1]
    return ids
