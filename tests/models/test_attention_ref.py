"""The reference paged attention against dense causal SDPA on the same data."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.layers.attention import Attention
from ember.models.config import ModelConfig
from ember.ops import paged_attention_ref, varlen_attention_ref, write_kv

from .helpers import PagedCache

HQ, HKV, D = 4, 2, 8
Seq = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # q, k, v of one sequence


def _cache_config() -> ModelConfig:
    return ModelConfig(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        hidden_size=HQ * D,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=HQ,
        num_key_value_heads=HKV,
        head_dim=D,
        vocab_size=8,
        max_position_embeddings=64,
    )


def _dense(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Whole-sequence causal attention, q/k/v [S, H, D] -> [S, Hq, D]."""
    s = q.shape[0]
    pos = torch.arange(s)
    mask = pos[None, :] <= pos[:, None]
    if window is not None:
        mask &= pos[None, :] > pos[:, None] - window
    qh, kh, vh = (x.transpose(0, 1) for x in (q, k, v))
    kh = kh.repeat_interleave(HQ // HKV, 0)
    vh = vh.repeat_interleave(HQ // HKV, 0)
    if softcap is None:
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
    else:
        scores = qh @ kh.transpose(1, 2) / D**0.5
        scores = torch.tanh(scores / softcap) * softcap
        out = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ vh
    return out.transpose(0, 1)


def _run_chunks(
    seqs: dict[int, Seq],
    schedule: list[list[tuple[int, int]]],
    window: int | None = None,
    softcap: float | None = None,
) -> dict[int, torch.Tensor]:
    """Feed each sequence's tokens through the paged cache in the scheduled chunk sizes."""
    cache = PagedCache(_cache_config(), num_blocks=64, block_size=4, seed=3)
    k_cache, v_cache = cache.kv_caches[0]
    done = dict.fromkeys(seqs, 0)
    outs: dict[int, list[torch.Tensor]] = {s: [] for s in seqs}
    for step in schedule:
        _, _, meta = cache.step([(s, [0] * n) for s, n in step])
        parts = [(s, slice(done[s], done[s] + n)) for s, n in step]
        q = torch.cat([seqs[s][0][sl] for s, sl in parts])
        k = torch.cat([seqs[s][1][sl] for s, sl in parts])
        v = torch.cat([seqs[s][2][sl] for s, sl in parts])
        write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
        out = paged_attention_ref(q, k_cache, v_cache, meta, D**-0.5, window, softcap)
        for i, (s, n) in enumerate(step):
            outs[s].append(out[meta.query_start_loc_cpu[i] : meta.query_start_loc_cpu[i + 1]])
            done[s] += n
    return {s: torch.cat(o) for s, o in outs.items()}


def _random_seqs(lengths: dict[int, int]) -> dict[int, Seq]:
    gen = torch.Generator().manual_seed(0)
    return {
        s: (
            torch.randn(n, HQ, D, generator=gen),
            torch.randn(n, HKV, D, generator=gen),
            torch.randn(n, HKV, D, generator=gen),
        )
        for s, n in lengths.items()
    }


# Mixed batches: prefill chunks, decodes and a late-starting sequence in the same steps.
SCHEDULE = [
    [(0, 7), (1, 3)],
    [(0, 1), (1, 9), (2, 5)],
    [(0, 6), (1, 1), (2, 1)],
    [(0, 1), (1, 1), (2, 6)],
]
LENGTHS = {0: 15, 1: 14, 2: 12}


def _check(window: int | None = None, softcap: float | None = None) -> None:
    seqs = _random_seqs(LENGTHS)
    got = _run_chunks(seqs, SCHEDULE, window, softcap)
    for s, (q, k, v) in seqs.items():
        torch.testing.assert_close(got[s], _dense(q, k, v, window, softcap), atol=1e-5, rtol=1e-5)


def test_matches_dense_causal_gqa_chunked_batches() -> None:
    _check()


def test_sliding_window() -> None:
    _check(window=5)


def test_softcap() -> None:
    _check(softcap=2.0)


def test_sliding_window_and_softcap() -> None:
    _check(window=3, softcap=1.5)


def test_one_shot_prefill_of_several_sequences() -> None:
    seqs = _random_seqs({0: 11, 1: 4, 2: 9})
    got = _run_chunks(seqs, [[(0, 11), (1, 4), (2, 9)]])
    for s, (q, k, v) in seqs.items():
        torch.testing.assert_close(got[s], _dense(q, k, v), atol=1e-5, rtol=1e-5)


def test_attention_layer_without_cache_matches_paged() -> None:
    seqs = _random_seqs({0: 6, 1: 9})
    cache = PagedCache(_cache_config(), block_size=4)
    _, _, meta = cache.step([(0, [0] * 6), (1, [0] * 9)])
    q, k, v = (torch.cat([seqs[0][i], seqs[1][i]]) for i in range(3))
    layer = Attention(HQ, HKV, D, sliding_window=4)
    paged = layer(q, k, v, cache.kv_caches[0], meta)
    empty = torch.empty(0)
    torch.testing.assert_close(layer(q, k, v, (empty, empty), meta), paged)
    torch.testing.assert_close(varlen_attention_ref(q, k, v, meta, D**-0.5, 4), paged)


def test_bfloat16_output_dtype() -> None:
    seqs = _random_seqs({0: 5})
    q, k, v = (x.bfloat16() for x in seqs[0])
    cache = PagedCache(_cache_config(), block_size=4, dtype=torch.bfloat16)
    _, _, meta = cache.step([(0, [0] * 5)])
    out = Attention(HQ, HKV, D)(q, k, v, cache.kv_caches[0], meta)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(
        out.float(), _dense(q.float(), k.float(), v.float()), atol=2e-2, rtol=2e-2
    )


def test_fp8_cache_writes_saturate_and_read_back() -> None:
    """An fp8 cache stores values past its range as its largest finite value (never NaN), the
    rest as torch rounds them; reading it back widens to the query's dtype."""
    for dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        limit = torch.finfo(dtype).max
        k_cache = torch.zeros(3, 4, 2, 8, dtype=dtype)
        v_cache = torch.zeros_like(k_cache)
        k = torch.randn(5, 2, 8)
        k[0] = 4 * limit
        k[1] = -4 * limit
        v = torch.randn(5, 2, 8)
        slots = torch.tensor([0, 5, 6, 9, 11])
        write_kv(k_cache, v_cache, k, v, slots)
        stored = k_cache.view(-1, 2, 8)[slots].float()
        assert not stored.isnan().any()
        assert (stored[0] == limit).all() and (stored[1] == -limit).all()
        assert torch.equal(stored[2:], k[2:].to(dtype).float())
        assert torch.equal(v_cache.view(-1, 2, 8)[slots].float(), v.to(dtype).float())
        assert k_cache.view(-1, 2, 8)[1].float().abs().sum() == 0  # other slots untouched
