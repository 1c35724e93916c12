"""Turn a step's logits into tokens: penalties, temperature, top-k/top-p/min-p, seeds, logprobs.

One path for the whole batch. Random rows draw with the exponential race (argmax of p / E with
E ~ Exp(1), which samples from p) so seeded rows only need their own noise, drawn from their
own generator: a seeded request gives the same tokens whatever else is in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ember.engine.logprobs import PositionLogprobs
from ember.engine.request import Request
from ember.engine.structured import GrammarMatcher, StructuredDecoding, apply_bitmask
from ember.engine.upload import upload
from ember.ops.triton_argmax import argmax_into


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]
    # Per row (None for rows that did not ask); None when no row asked for logprobs.
    logprobs: list[PositionLogprobs | None] | None


class Sampler:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._generators: dict[str, torch.Generator] = {}
        # Set by the engine core: grammars for requests with params.structured.
        self.structured: StructuredDecoding | None = None
        self._matchers: dict[str, GrammarMatcher] = {}

    def forget(self, request_id: str) -> None:
        self._generators.pop(request_id, None)
        self._matchers.pop(request_id, None)

    def _generator(self, req: Request) -> torch.Generator:
        gen = self._generators.get(req.request_id)
        if gen is None:
            gen = torch.Generator(device=self.device)
            assert req.params.seed is not None
            gen.manual_seed(req.params.seed % 2**64)
            self._generators[req.request_id] = gen
        return gen

    def __call__(self, logits: torch.Tensor, reqs: list[Request]) -> SamplerOutput:
        logits = logits.float()
        want_logprobs = [r.params.logprobs for r in reqs]
        raw_logprobs = (
            torch.log_softmax(logits, dim=-1) if any(k is not None for k in want_logprobs) else None
        )
        logits = self._apply_penalties(logits, reqs)
        constrained = [i for i, r in enumerate(reqs) if r.params.structured is not None]
        if constrained:
            self._apply_grammars(logits, reqs, constrained)
        tokens = self._sample(logits, reqs)
        token_list = tokens.tolist()  # the step's one device -> host sync
        for i in constrained:
            self._matchers[reqs[i].request_id].accept(token_list[i])
        logprobs = None
        if raw_logprobs is not None:
            logprobs = gather_logprobs(raw_logprobs, tokens, want_logprobs)
        return SamplerOutput(token_list, logprobs)

    def sample_tokens(self, logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
        """The sampled tokens, left on the device (no sync), for rows that need no penalties,
        grammar, min_tokens masking or logprobs (see `needs_host`)."""
        if all(r.params.greedy for r in reqs):
            out = torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)
            return argmax_into(logits, out)
        return self._sample(logits.float(), reqs)

    @staticmethod
    def needs_host(req: Request) -> bool:
        """Whether sampling `req`'s next token needs its latest token on the CPU first
        (penalties and min_tokens read its output so far, grammars advance on it) or sends
        logprobs back, so it cannot be sampled a step ahead."""
        p = req.params
        return (
            p.logprobs is not None
            or p.structured is not None
            or p.repetition_penalty != 1.0
            or p.presence_penalty != 0.0
            or p.frequency_penalty != 0.0
            or len(req.output_token_ids) < p.min_tokens
            or bool(p.logit_bias)
            or p.allowed_token_ids is not None
            or (p.prompt_logprobs is not None and req.num_computed_tokens < req.num_prompt_tokens)
        )

    def _apply_grammars(self, logits: torch.Tensor, reqs: list[Request], rows: list[int]) -> None:
        if self.structured is None:
            raise RuntimeError("structured outputs need the sampler's StructuredDecoding")
        bitmask = self.structured.new_bitmask(len(rows))
        for j, i in enumerate(rows):
            req = reqs[i]
            matcher = self._matchers.get(req.request_id)
            if matcher is None:
                assert req.params.structured is not None
                matcher = self.structured.matcher(req.params.structured)
                self._matchers[req.request_id] = matcher
            if matcher.failed:  # allow only end of sequence rather than an empty mask
                bitmask[j] = 0
                for t in req.eos_token_ids:
                    bitmask[j, t // 32] |= 1 << (t % 32)
            else:
                matcher.fill(bitmask, j)
        apply_bitmask(logits, rows, bitmask)

    def _apply_penalties(self, logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
        vocab = logits.shape[1]
        dev = logits.device
        rows_rep = [i for i, r in enumerate(reqs) if r.params.repetition_penalty != 1.0]
        rows_pf = [
            i
            for i, r in enumerate(reqs)
            if r.params.presence_penalty != 0.0 or r.params.frequency_penalty != 0.0
        ]
        rows_min = [i for i, r in enumerate(reqs) if len(r.output_token_ids) < r.params.min_tokens]
        if rows_rep:
            for i in rows_rep:
                r = reqs[i]
                window = r.all_token_ids[-r.params.penalty_window :]
                # Filtered on the host: a boolean mask on the device would sync with it.
                seen = upload(sorted(t for t in set(window) if t < vocab), torch.int64, dev)
                vals = logits[i, seen]
                pen = r.params.repetition_penalty
                logits[i, seen] = torch.where(vals > 0, vals / pen, vals * pen)
        if rows_pf:
            for i in rows_pf:
                r = reqs[i]
                if not r.output_token_ids:
                    continue
                recent = r.output_token_ids[-r.params.penalty_window :]
                out = upload([t for t in recent if t < vocab], torch.int64, dev)
                counts = torch.zeros(vocab, device=dev)
                counts.scatter_add_(0, out, torch.ones_like(out, dtype=counts.dtype))
                logits[i] -= r.params.frequency_penalty * counts
                logits[i] -= r.params.presence_penalty * (counts > 0).float()
        for i, r in enumerate(reqs):
            if r.params.logit_bias or r.params.allowed_token_ids is not None:
                self._filter_tokens(logits, i, r)
        if rows_min:
            for i in rows_min:
                r = reqs[i]
                banned = set(r.params.stop_token_ids)
                if not r.params.ignore_eos:
                    banned |= r.eos_token_ids
                ids = [t for t in banned if t < vocab]
                if ids:
                    logits[i, upload(ids, torch.int64, dev)] = float("-inf")
        return logits

    @staticmethod
    def _filter_tokens(logits: torch.Tensor, i: int, req: Request) -> None:
        """Row i keeps only the allowed tokens (vLLM's allowed_token_ids), then takes its
        logit_bias (OpenAI's: added to the logits)."""
        p = req.params
        dev = logits.device
        if p.allowed_token_ids is not None:
            keep = upload(sorted(set(p.allowed_token_ids)), torch.int64, dev)
            kept = logits[i, keep]
            logits[i] = float("-inf")
            logits[i, keep] = kept
        if p.logit_bias:
            ids = upload(list(p.logit_bias), torch.int64, dev)
            logits[i, ids] += upload(list(p.logit_bias.values()), torch.float32, dev)

    def _sample(self, logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
        greedy = [r.params.greedy for r in reqs]
        argmax = logits.argmax(dim=-1)
        if all(greedy):
            return argmax
        dev = logits.device
        temps = upload(
            [1.0 if g else r.params.temperature for g, r in zip(greedy, reqs, strict=True)],
            torch.float32,
            dev,
        )
        logits = logits / temps.unsqueeze(1)
        if any(r.params.top_k > 0 or r.params.top_p < 1.0 or r.params.min_p > 0 for r in reqs):
            logits = self._truncate(logits, reqs)
        probs = torch.softmax(logits, dim=-1)
        noise = torch.empty_like(probs).exponential_()
        for i, r in enumerate(reqs):
            if r.params.seed is not None and not greedy[i]:
                noise[i].exponential_(generator=self._generator(r))
        sampled = (probs / noise).argmax(dim=-1)
        is_greedy = upload(greedy, torch.bool, dev)
        return torch.where(is_greedy, argmax, sampled)

    @staticmethod
    def _truncate(logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
        dev = logits.device
        vocab = logits.shape[1]
        ks = [min(r.params.top_k or vocab, vocab) for r in reqs]
        top_k = upload(ks, torch.int64, dev)
        top_p = upload([r.params.top_p for r in reqs], torch.float32, dev)
        min_p = upload([r.params.min_p for r in reqs], torch.float32, dev)
        # Only the best max(top_k) candidates can survive: when every row sets top_k (Ollama
        # sends 40 by default) a top-k of that width replaces sorting the whole vocabulary.
        width = max(ks)
        if width < vocab:
            sorted_logits, order = logits.topk(width, dim=-1)
        else:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
        ranks = torch.arange(width, device=dev).unsqueeze(0)
        drop = ranks >= top_k.unsqueeze(1)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        probs = torch.softmax(sorted_logits, dim=-1)
        # Keep the smallest set whose mass reaches top_p: drop a token when the mass before it
        # already does. The first token is always kept.
        mass_before = probs.cumsum(dim=-1) - probs
        drop |= mass_before >= top_p.unsqueeze(1)
        drop |= probs < min_p.unsqueeze(1) * probs[:, :1]
        drop[:, 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        return torch.full_like(logits, float("-inf")).scatter_(1, order, sorted_logits)


def gather_logprobs(
    logprobs: torch.Tensor, chosen: torch.Tensor, want: Sequence[int | None]
) -> list[PositionLogprobs | None]:
    """Each row's chosen token with its logprob and rank, then its top `want` tokens, read back
    in one transfer (as float64: token ids and ranks are exact there). None for rows whose
    `want` is None. `logprobs` is [rows, vocab] (log_softmax of the raw logits)."""
    k = max((w or 0) for w in want)
    own = logprobs.gather(1, chosen.unsqueeze(1))
    rank = (logprobs >= own).sum(1, keepdim=True)
    parts = [chosen.unsqueeze(1), own, rank]
    if k > 0:
        vals, ids = logprobs.topk(k, dim=-1)
        parts += [ids, vals]
    table = torch.cat([p.double() for p in parts], dim=1).tolist()
    result: list[PositionLogprobs | None] = []
    for row, w in zip(table, want, strict=True):
        if w is None:
            result.append(None)
            continue
        token_ids = [int(row[0]), *(int(t) for t in row[3 : 3 + w])]
        values = [row[1], *row[3 + k : 3 + k + w]]
        result.append(PositionLogprobs(token_ids, values, int(row[2])))
    return result
