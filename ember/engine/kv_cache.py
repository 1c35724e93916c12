"""The paged KV cache's block manager, with prefix caching.

Blocks hold `block_size` tokens. A full block gets a hash chained from its parent's, so equal
prefixes map to equal hash chains; a new request reuses the longest chain of cached blocks whose
stored tokens equal its own. Blocks whose ref count drops to 0 keep their hash and go to the tail
of an LRU free queue; allocation takes from the head and only then forgets the hash.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ember.engine.request import Request


def hash_block(parent: int | None, tokens: tuple[int, ...]) -> int:
    # Python's hash of a tuple of ints is stable across processes (no hash randomisation),
    # and a hit is verified against the stored tokens, so a collision cannot corrupt output.
    return hash((parent, tokens))


@dataclass(slots=True, eq=False)
class Block:
    block_id: int
    ref_cnt: int = 0
    block_hash: int | None = None
    token_ids: tuple[int, ...] | None = None  # kept for verification on a hit


class FreeQueue:
    """The free blocks, head first: the next to hand out is the head.

    Freed blocks holding nothing reusable go to the head, cached ones to the tail (LRU). Blocks
    never handed out sit between the two, in id order; they exist as Block objects only once
    handed out, so a cache of tens of thousands of blocks costs nothing to set up (a Block each
    took 26 ms for 34k blocks, 44 ms for 68k, on the start path)."""

    def __init__(self, blocks: list[Block | None]) -> None:
        self._blocks = blocks  # block_id -> Block, filled in as blocks are first handed out
        self._front: OrderedDict[int, Block] = OrderedDict()  # head first
        self._fresh = 0  # ids fresh..len(blocks)-1 were never handed out
        self._tail: OrderedDict[int, Block] = OrderedDict()  # least recently freed first

    def __len__(self) -> int:
        return len(self._front) + len(self._blocks) - self._fresh + len(self._tail)

    def pop_head(self) -> Block:
        if self._front:
            return self._front.popitem(last=False)[1]
        if self._fresh < len(self._blocks):
            block = Block(self._fresh)
            self._blocks[self._fresh] = block
            self._fresh += 1
            return block
        return self._tail.popitem(last=False)[1]

    def push_head(self, block: Block) -> None:
        self._front[block.block_id] = block
        self._front.move_to_end(block.block_id, last=False)

    def push_tail(self, block: Block) -> None:
        self._tail[block.block_id] = block

    def remove(self, block: Block) -> None:
        """Take a free block out of the queue (a cached block that a request reuses)."""
        if self._tail.pop(block.block_id, None) is None:
            del self._front[block.block_id]

    def handed_out(self) -> list[Block]:
        """The free blocks that were ever handed out (the others hold nothing)."""
        return [*self._front.values(), *self._tail.values()]


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be at least 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        # block_id -> Block, None until the block is first handed out
        self.blocks: list[Block | None] = [None] * num_blocks
        self._free = FreeQueue(self.blocks)
        self._cached: dict[int, Block] = {}
        # request_id -> number of its leading blocks already registered in the cache
        self._num_registered: dict[str, int] = {}
        self.prefix_queries = 0  # tokens looked up, cumulative
        self.prefix_hits = 0  # tokens found, cumulative

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def usage(self) -> float:
        return self.num_used_blocks / self.num_blocks

    def _block(self, block_id: int) -> Block:
        block = self.blocks[block_id]
        assert block is not None, f"block {block_id} was never handed out"
        return block

    def _update_hashes(self, req: Request) -> None:
        bs = self.block_size
        num_full = req.num_tokens // bs
        for i in range(len(req.block_hashes), num_full):
            parent = req.block_hashes[i - 1] if i else None
            req.block_hashes.append(hash_block(parent, tuple(req.tokens(i * bs, (i + 1) * bs))))

    def get_computed_blocks(self, req: Request) -> list[Block]:
        """The longest cached prefix of `req`, in whole blocks, leaving at least one token to
        compute (the step that computes it produces the next token's logits)."""
        if not self.enable_prefix_caching or req.params.prompt_logprobs is not None:
            return []  # prompt logprobs need every prompt position computed
        self._update_hashes(req)
        bs = self.block_size
        max_blocks = (req.num_tokens - 1) // bs
        hits: list[Block] = []
        for i in range(max_blocks):
            block = self._cached.get(req.block_hashes[i])
            if block is None or block.token_ids != tuple(req.tokens(i * bs, (i + 1) * bs)):
                break
            hits.append(block)
        self.prefix_queries += req.num_tokens
        self.prefix_hits += len(hits) * bs
        return hits

    def allocate_slots(
        self, req: Request, num_new_tokens: int, computed: list[Block] | None = None
    ) -> bool:
        """Give `req` blocks for `num_new_tokens` more tokens after its computed ones (and the
        prefix-cache blocks in `computed`, which it takes a reference on). False, and no change,
        if there are not enough free blocks."""
        computed = computed or []
        num_computed = req.num_computed_tokens + len(computed) * self.block_size
        needed_total = -(-(num_computed + num_new_tokens) // self.block_size)
        num_new_blocks = needed_total - len(req.block_ids) - len(computed)
        reclaimed = sum(1 for b in computed if b.ref_cnt == 0)
        if num_new_blocks > len(self._free) - reclaimed:
            return False
        for block in computed:
            if block.ref_cnt == 0:
                self._free.remove(block)
            block.ref_cnt += 1
            req.block_ids.append(block.block_id)
        if computed:
            self._num_registered[req.request_id] = len(req.block_ids)
        for _ in range(max(num_new_blocks, 0)):
            block = self._free.pop_head()
            if block.block_hash is not None:
                if self._cached.get(block.block_hash) is block:
                    del self._cached[block.block_hash]
                block.block_hash = None
                block.token_ids = None
            block.ref_cnt = 1
            req.block_ids.append(block.block_id)
        return True

    def cache_full_blocks(self, req: Request) -> None:
        """Register the request's blocks that are full and computed, so later requests can reuse
        them. Call after num_computed_tokens advances."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        num_full = req.num_computed_tokens // bs
        start = self._num_registered.get(req.request_id, 0)
        if num_full <= start:
            return
        self._update_hashes(req)
        for i in range(start, num_full):
            block = self._block(req.block_ids[i])
            if block.block_hash is None:
                block.block_hash = req.block_hashes[i]
                block.token_ids = tuple(req.tokens(i * bs, (i + 1) * bs))
                self._cached.setdefault(block.block_hash, block)
        self._num_registered[req.request_id] = num_full

    def free(self, req: Request) -> None:
        """Drop the request's references. Tail blocks are freed first, so they are evicted before
        the shared prefix blocks that other requests are more likely to reuse."""
        for block_id in reversed(req.block_ids):
            block = self._block(block_id)
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                if block.block_hash is None:
                    # Holds nothing reusable: hand it out before any cached block.
                    self._free.push_head(block)
                else:
                    self._free.push_tail(block)
        req.block_ids = []
        self._num_registered.pop(req.request_id, None)

    def reset_prefix_cache(self) -> None:
        for block in self._free.handed_out():
            block.block_hash = None
            block.token_ids = None
        self._cached = {
            b.block_hash: b for b in self.blocks if b is not None and b.block_hash is not None
        }

    def adopt(self, block_hash: int, tokens: tuple[int, ...]) -> Block | None:
        """Take a free block for a prefix block computed elsewhere (warm KV loaded at start):
        it gets the hash and tokens and waits in the free queue as a cached block, so requests
        with that prefix hit it. None if no block is free or the hash is already cached."""
        if block_hash in self._cached or not self._free:
            return None
        block = self._free.pop_head()
        if block.block_hash is not None and self._cached.get(block.block_hash) is block:
            del self._cached[block.block_hash]
        block.block_hash = block_hash
        block.token_ids = tokens
        self._cached[block_hash] = block
        self._free.push_tail(block)
        return block

    def cached_chain(self, token_ids: list[int]) -> list[Block]:
        """The cached blocks holding the whole-block prefix of token_ids, in order, as far as
        the chain is cached (stored tokens verified)."""
        bs = self.block_size
        chain: list[Block] = []
        parent: int | None = None
        for i in range(len(token_ids) // bs):
            tokens = tuple(token_ids[i * bs : (i + 1) * bs])
            parent = hash_block(parent, tokens)
            block = self._cached.get(parent)
            if block is None or block.token_ids != tokens:
                break
            chain.append(block)
        return chain
