"""Sampler: greedy, truncation, seeds independent of the batch, penalties, min_tokens, logprobs."""

from __future__ import annotations

import pytest
import torch

from ember.engine.request import Request
from ember.engine.sampler import Sampler
from ember.sampling_params import SamplingParams

VOCAB = 50


def req(rid: str, prompt: list[int] | None = None, **kw: object) -> Request:
    return Request(rid, prompt or [1, 2, 3], SamplingParams(**kw), frozenset({0}), 16)  # type: ignore[arg-type]


def logits_rows(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, VOCAB, generator=g)


def test_greedy_is_argmax() -> None:
    logits = logits_rows(3)
    out = Sampler(torch.device("cpu"))(
        logits.clone(), [req(str(i), temperature=0.0) for i in range(3)]
    )
    assert out.token_ids == logits.argmax(-1).tolist()


def test_greedy_rows_sampled_on_the_device_match_the_host_path() -> None:
    logits = logits_rows(4).to(torch.bfloat16)
    reqs = [req(str(i), temperature=0.0) for i in range(4)]
    s = Sampler(torch.device("cpu"))
    assert s.sample_tokens(logits, reqs).tolist() == s(logits.clone(), reqs).token_ids


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    logits = logits_rows(2)
    s = Sampler(torch.device("cpu"))
    out = s(logits.clone(), [req("a", top_k=1), req("b", top_p=1e-6)])
    assert out.token_ids == logits.argmax(-1).tolist()


def test_top_k_limits_choices() -> None:
    logits = logits_rows(1)
    allowed = set(logits[0].topk(3).indices.tolist())
    s = Sampler(torch.device("cpu"))
    for i in range(50):
        tok = s(logits.clone(), [req(f"r{i}", top_k=3, temperature=2.0)]).token_ids[0]
        assert tok in allowed


def test_min_p_limits_choices() -> None:
    logits = torch.full((1, VOCAB), -10.0)
    logits[0, 5] = 5.0
    logits[0, 6] = 4.5
    s = Sampler(torch.device("cpu"))
    toks = {s(logits.clone(), [req(f"r{i}", min_p=0.1)]).token_ids[0] for i in range(100)}
    assert toks <= {5, 6} and toks


def test_seeded_rows_do_not_depend_on_the_batch() -> None:
    logits = logits_rows(4, seed=1)
    alone = Sampler(torch.device("cpu"))
    seq_alone = [alone(logits[:1].clone(), [req("x", seed=42)]).token_ids[0] for _ in range(10)]
    batched = Sampler(torch.device("cpu"))
    seq_batched = []
    for _ in range(10):
        rows = [req("x", seed=42), req("y"), req("z", seed=7), req("w")]
        seq_batched.append(batched(logits.clone(), rows).token_ids[0])
    assert seq_alone == seq_batched
    assert len(set(seq_alone)) > 1  # it does sample


def test_repetition_and_presence_penalties_demote_seen_tokens() -> None:
    logits = torch.zeros(1, VOCAB)
    logits[0, 3] = 2.0
    logits[0, 4] = 1.9
    r = req("a", prompt=[3], temperature=0.0, repetition_penalty=1.5)
    assert Sampler(torch.device("cpu"))(logits.clone(), [r]).token_ids == [4]
    r2 = req("b", prompt=[1], temperature=0.0, presence_penalty=1.0)
    r2.output_token_ids = [3]
    assert Sampler(torch.device("cpu"))(logits.clone(), [r2]).token_ids == [4]


def test_min_tokens_bans_eos() -> None:
    logits = torch.zeros(1, VOCAB)
    logits[0, 0] = 10.0  # eos
    r = req("a", temperature=0.0, min_tokens=2, stop_token_ids=[9])
    assert Sampler(torch.device("cpu"))(logits.clone(), [r]).token_ids != [0]


def test_logprobs_are_raw_and_sorted() -> None:
    logits = logits_rows(1)
    out = Sampler(torch.device("cpu"))(logits.clone(), [req("a", temperature=0.0, logprobs=3)])
    assert out.logprobs is not None
    row = out.logprobs[0]
    expected = torch.log_softmax(logits[0], -1)
    assert row is not None and row.token_ids[0] == out.token_ids[0] and row.rank == 1
    assert abs(row.logprobs[0] - expected[row.token_ids[0]].item()) < 1e-5
    assert row.token_ids[1:] == expected.topk(3).indices.tolist()
    assert row.logprobs[1:] == pytest.approx(expected.topk(3).values.tolist(), abs=1e-6)


def test_logprobs_rank_the_sampled_token_and_skip_rows_without() -> None:
    """A sampled token outside the top k still comes first, with its rank in the whole
    vocabulary (vLLM's: the tokens whose logprob is at least its own); rows that asked for no
    logprobs get none."""
    logits = logits_rows(2)
    worst = int(logits[0].argmin())
    reqs = [req("a", temperature=0.0, logprobs=2, allowed_token_ids=[worst]), req("b")]
    out = Sampler(torch.device("cpu"))(logits.clone(), reqs)
    assert out.logprobs is not None and out.logprobs[1] is None
    row = out.logprobs[0]
    assert row is not None and row.token_ids[0] == out.token_ids[0] == worst
    assert row.rank == VOCAB and len(row.token_ids) == 3 and worst not in row.token_ids[1:]


def test_truncation_by_top_k_width_equals_the_full_sort() -> None:
    logits = logits_rows(6, seed=3) * 3
    rows = [
        req("a", top_k=5, top_p=0.9),
        req("b", top_k=40, min_p=0.05),
        req("c", top_k=1),
        req("d", top_k=12, top_p=0.5, min_p=0.1),
        req("e", top_k=7),
        req("f", top_k=49),
    ]
    narrow = Sampler._truncate(logits.clone(), rows)
    # The same rows with one row lifting the width to the whole vocabulary (full sort).
    wide = Sampler._truncate(torch.cat([logits, logits[:1]]), [*rows, req("g", top_p=0.99)])[:6]
    assert torch.equal(torch.isinf(narrow), torch.isinf(wide))
    kept = ~torch.isinf(narrow)
    assert torch.equal(narrow[kept], wide[kept])
    assert kept.sum(-1).tolist()[2] == 1 and all(
        n <= k for n, k in zip(kept.sum(-1).tolist(), [5, 40, 1, 12, 7, 49], strict=True)
    )


def test_logit_bias_and_allowed_token_ids_steer_the_row_that_sets_them() -> None:
    logits = logits_rows(3)
    s = Sampler(torch.device("cpu"))
    worst = int(logits[0].argmin())
    allowed = [7, 11, 13]
    reqs = [
        req("bias", temperature=0.0, logit_bias={worst: 100.0}),
        req("allowed", temperature=1.5, allowed_token_ids=allowed, seed=3),
        req("plain", temperature=0.0),
    ]
    assert all(Sampler.needs_host(r) for r in reqs[:2]) and not Sampler.needs_host(reqs[2])
    for _ in range(20):
        out = s(logits.clone(), reqs)
        assert out.token_ids[0] == worst and out.token_ids[1] in allowed
        assert out.token_ids[2] == int(logits[2].argmax())
    banned = int(logits[2].argmax())
    out = s(logits.clone(), [req("ban", temperature=0.0, logit_bias={banned: -100.0})])
    assert out.token_ids[0] != banned
