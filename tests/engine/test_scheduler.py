"""Scheduler: token budget, chunked prefill, max sequences, preemption, stop conditions."""

from __future__ import annotations

from ember.engine.kv_cache import KVCacheManager
from ember.engine.request import Request, RequestStatus
from ember.engine.scheduler import Scheduler
from ember.sampling_params import SamplingParams


def make_req(rid: str, n_prompt: int, max_tokens: int = 8, **kw: object) -> Request:
    params = SamplingParams(max_tokens=max_tokens, **kw)  # type: ignore[arg-type]
    return Request(rid, list(range(1, n_prompt + 1)), params, frozenset({0}), max_tokens)


def run_step(s: Scheduler, token: int = 7) -> dict[str, int]:
    out = s.schedule()
    sampled = {
        r.request_id: token for r, n in out.scheduled if r.num_computed_tokens + n == r.num_tokens
    }
    s.update(out, sampled)
    return {r.request_id: n for r, n in out.scheduled}


def test_long_prompt_is_chunked_under_the_budget() -> None:
    s = Scheduler(KVCacheManager(64, 4, True), max_num_seqs=4, max_num_batched_tokens=8)
    req = make_req("a", 20)
    s.add(req)
    assert run_step(s) == {"a": 8}
    assert req.output_token_ids == []
    assert run_step(s) == {"a": 8}
    assert run_step(s) == {"a": 4}
    assert req.output_token_ids == [7]
    assert run_step(s) == {"a": 1}


def test_decode_and_prefill_share_a_step() -> None:
    s = Scheduler(KVCacheManager(64, 4, True), max_num_seqs=4, max_num_batched_tokens=10)
    s.add(make_req("a", 3))
    run_step(s)
    s.add(make_req("b", 30))
    assert run_step(s) == {"a": 1, "b": 9}


def test_max_num_seqs_limits_running() -> None:
    s = Scheduler(KVCacheManager(64, 4, True), max_num_seqs=2, max_num_batched_tokens=100)
    for i in range(3):
        s.add(make_req(str(i), 3))
    assert set(run_step(s)) == {"0", "1"}
    assert s.num_waiting == 1


def test_preempts_newest_when_blocks_run_out_and_recovers() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=2, enable_prefix_caching=True)
    s = Scheduler(kv, max_num_seqs=4, max_num_batched_tokens=100)
    a, b = make_req("a", 3, max_tokens=4), make_req("b", 3, max_tokens=4)
    s.add(a)
    s.add(b)
    run_step(s)  # both prefilled: 2 blocks each, cache full
    steps = 0
    while s.has_unfinished() and steps < 50:
        run_step(s)
        steps += 1
    assert not s.has_unfinished()
    assert s.num_preemptions >= 1
    assert b.num_preemptions >= 1 and a.num_preemptions == 0
    assert len(a.output_token_ids) == 4 and len(b.output_token_ids) == 4
    assert kv.num_used_blocks == 0


def test_stop_conditions() -> None:
    s = Scheduler(KVCacheManager(64, 4, True), max_num_seqs=4, max_num_batched_tokens=100)
    eos = make_req("eos", 3)
    s.add(eos)
    run_step(s, token=0)
    assert eos.finish_reason == "stop" and eos.stop_reason is None

    stop_id = make_req("sid", 3, stop_token_ids=[5])
    s.add(stop_id)
    run_step(s, token=5)
    assert stop_id.finish_reason == "stop" and stop_id.stop_reason == 5

    ignore = make_req("ign", 3, max_tokens=2, ignore_eos=True)
    s.add(ignore)
    run_step(s, token=0)
    assert ignore.status == RequestStatus.RUNNING
    run_step(s, token=0)
    assert ignore.finish_reason == "length"


def test_abort_frees_blocks() -> None:
    kv = KVCacheManager(16, 4, True)
    s = Scheduler(kv, max_num_seqs=4, max_num_batched_tokens=100)
    s.add(make_req("a", 9))
    run_step(s)
    assert kv.num_used_blocks > 0
    req = s.abort("a")
    assert req is not None and req.finish_reason == "abort"
    assert kv.num_used_blocks == 0 and not s.has_unfinished()
