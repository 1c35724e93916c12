"""LLMEngine: the core plus the tokenizer and output processing, stepped synchronously.

The offline `LLM` API and the server's `AsyncEngine` both drive one of these.
"""

from __future__ import annotations

import time
from dataclasses import replace

from ember.engine.args import EngineArgs
from ember.engine.core import EngineCore, EngineStats
from ember.engine.output_processor import OutputProcessor
from ember.engine.request import Request
from ember.outputs import RequestOutput
from ember.sampling_params import OutputKind, SamplingParams
from ember.tokenizer import Tokenizer


class LLMEngine:
    def __init__(self, args: EngineArgs) -> None:
        t0 = time.monotonic()
        self.args = args
        self.tokenizer = Tokenizer.from_dir(args.model)
        self.core = EngineCore(args)
        self.processor = OutputProcessor(self.tokenizer)
        self.eos_token_ids = frozenset(self.tokenizer.eos_token_ids)
        self.load_duration_s = time.monotonic() - t0

    @property
    def max_model_len(self) -> int:
        return self.core.max_model_len

    def make_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        arrival_time: float | None = None,
    ) -> Request:
        """Validate and build a request without touching engine state (safe from any thread)."""
        arrival = time.monotonic() if arrival_time is None else arrival_time
        return self.core.make_request(
            request_id, prompt_token_ids, params, self.eos_token_ids, arrival
        )

    def add(self, req: Request, prompt: str | None = None) -> None:
        self.core.add_request(req)
        self.processor.add(
            req.request_id, prompt, req.prompt_token_ids, req.params, req.arrival_time
        )

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        prompt: str | None = None,
    ) -> None:
        self.add(self.make_request(request_id, prompt_token_ids, params), prompt)

    def abort(self, request_ids: list[str]) -> list[RequestOutput]:
        self.core.abort(request_ids)
        outs = [self.processor.abort(rid) for rid in request_ids]
        return [o for o in outs if o is not None]

    def has_unfinished(self) -> bool:
        return self.core.has_unfinished()

    def has_running(self) -> bool:
        """Whether any request holds a running slot (is prefilling or decoding)."""
        return bool(self.core.scheduler.running)

    def step(self) -> list[RequestOutput]:
        outputs, to_abort = self.processor.process(self.core.step())
        if to_abort:
            self.core.abort(to_abort)
        return outputs

    def stats(self, num_unfinished: int | None = None) -> EngineStats:
        return self.core.stats(num_unfinished)

    def encode_prompt(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt, add_special_tokens=True)


def with_output_kind(params: SamplingParams, kind: OutputKind) -> SamplingParams:
    return params if params.output_kind == kind else replace(params, output_kind=kind)
