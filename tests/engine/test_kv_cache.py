"""Block manager: allocation, ref counts, prefix-cache hits and LRU eviction."""

from __future__ import annotations

from ember.engine.kv_cache import KVCacheManager
from ember.engine.request import Request
from ember.sampling_params import SamplingParams


def make_req(rid: str, tokens: list[int]) -> Request:
    return Request(rid, tokens, SamplingParams(), frozenset(), max_tokens=16)


def test_allocate_and_free_returns_every_block() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    req = make_req("a", list(range(10)))
    assert kv.allocate_slots(req, 10)
    assert len(req.block_ids) == 3
    assert kv.num_used_blocks == 3
    kv.free(req)
    assert req.block_ids == []
    assert kv.num_used_blocks == 0 and kv.usage == 0.0


def test_allocation_fails_without_change_when_full() -> None:
    kv = KVCacheManager(num_blocks=2, block_size=4, enable_prefix_caching=True)
    req = make_req("a", list(range(12)))
    assert not kv.allocate_slots(req, 12)
    assert req.block_ids == [] and kv.num_free_blocks == 2


def test_prefix_hit_shares_blocks_and_verifies_tokens() -> None:
    kv = KVCacheManager(num_blocks=16, block_size=4, enable_prefix_caching=True)
    a = make_req("a", list(range(10)))
    kv.allocate_slots(a, 10)
    a.num_computed_tokens = 10
    kv.cache_full_blocks(a)

    b = make_req("b", [*range(8), 99, 98, 97])
    hits = kv.get_computed_blocks(b)
    assert [h.block_id for h in hits] == a.block_ids[:2]
    assert kv.prefix_hits == 8
    assert kv.allocate_slots(b, 3, hits)
    assert b.block_ids[:2] == a.block_ids[:2]
    assert kv.blocks[a.block_ids[0]].ref_cnt == 2

    c = make_req("c", [0, 1, 2, 7, 4, 5, 6, 7, 8])  # first block differs
    assert kv.get_computed_blocks(c) == []


def test_full_hit_leaves_last_token_to_compute() -> None:
    kv = KVCacheManager(num_blocks=16, block_size=4, enable_prefix_caching=True)
    a = make_req("a", list(range(8)))
    kv.allocate_slots(a, 8)
    a.num_computed_tokens = 8
    kv.cache_full_blocks(a)
    b = make_req("b", list(range(8)))
    assert len(kv.get_computed_blocks(b)) == 1  # 7 tokens may hit, so one whole block


def test_freed_blocks_stay_cached_until_reused_lru() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=2, enable_prefix_caching=True)
    a = make_req("a", [1, 2, 3, 4, 5])
    kv.allocate_slots(a, 5)
    a.num_computed_tokens = 5
    kv.cache_full_blocks(a)
    kv.free(a)
    assert kv.num_used_blocks == 0
    # Still a hit after the owner finished.
    again = make_req("again", [1, 2, 3, 4, 9])
    hits = kv.get_computed_blocks(again)
    assert len(hits) == 2
    # A request that needs every block evicts the cached ones.
    big = make_req("big", list(range(100, 108)))
    assert kv.allocate_slots(big, 8)
    assert kv.get_computed_blocks(make_req("x", [1, 2, 3, 4, 9])) == []


def test_tail_blocks_are_evicted_before_prefix_blocks() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=2, enable_prefix_caching=True)
    a = make_req("a", [1, 2, 3, 4, 5, 6])
    kv.allocate_slots(a, 6)
    a.num_computed_tokens = 6
    kv.cache_full_blocks(a)
    kv.free(a)
    # One unhashed block is free plus three cached ones; take two.
    b = make_req("b", [7, 8, 9, 10])
    assert kv.allocate_slots(b, 4)
    # The first block of a's prefix must survive.
    hits = kv.get_computed_blocks(make_req("c", [1, 2, 3]))
    assert len(hits) == 1


def test_no_prefix_caching() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    a = make_req("a", list(range(8)))
    kv.allocate_slots(a, 8)
    a.num_computed_tokens = 8
    kv.cache_full_blocks(a)
    assert kv.get_computed_blocks(make_req("b", list(range(9)))) == []


def test_the_free_queue_hands_out_blocks_in_the_order_of_one_lru_list() -> None:
    """FreeQueue keeps never-used blocks as a counter, not objects; it must hand blocks out in
    exactly the order of one list of every block (fresh ones in id order at first, freed blocks
    holding nothing at the head, cached ones at the tail, reused cached ones taken out)."""
    import random
    from collections import OrderedDict

    from ember.engine.kv_cache import Block, FreeQueue

    rng = random.Random(0)
    for trial in range(20):
        n = rng.randint(1, 40)
        blocks: list[Block | None] = [None] * n
        queue = FreeQueue(blocks)
        reference: OrderedDict[int, None] = OrderedDict.fromkeys(range(n))
        held: list[Block] = []
        for _ in range(300):
            op = rng.random()
            if op < 0.45 and reference:
                block = queue.pop_head()
                assert block.block_id == reference.popitem(last=False)[0], trial
                assert blocks[block.block_id] is block
                held.append(block)
            elif op < 0.8 and held:
                block = held.pop(rng.randrange(len(held)))
                reference[block.block_id] = None
                if rng.random() < 0.5:
                    queue.push_head(block)
                    reference.move_to_end(block.block_id, last=False)
                else:
                    queue.push_tail(block)
            elif queue.handed_out():
                block = rng.choice(queue.handed_out())
                queue.remove(block)
                del reference[block.block_id]
                held.append(block)
            assert len(queue) == len(reference)
            assert {b.block_id for b in queue.handed_out()} <= set(reference)


def test_a_new_cache_creates_no_block_objects() -> None:
    kv = KVCacheManager(num_blocks=100_000, block_size=16, enable_prefix_caching=True)
    assert kv.num_free_blocks == 100_000 and kv.blocks.count(None) == 100_000
    req = make_req("a", list(range(40)))
    assert kv.allocate_slots(req, 40)
    assert req.block_ids == [0, 1, 2]
    assert kv.blocks.count(None) == 100_000 - 3
