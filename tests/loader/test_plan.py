"""Cutting a checkpoint's tensors into the loader's reads: every tensor byte in exactly one chunk,
chunks aligned and no larger than asked, and a load's last chunks cut small."""

from __future__ import annotations

import pytest
import torch

from ember.loader.header import TensorMeta
from ember.loader.plan import Chunk, plan_chunks

KiB = 1024


def _tensors() -> list[TensorMeta]:
    """Two files of back-to-back tensors of odd sizes (one empty), padding between some."""
    metas: list[TensorMeta] = []
    for file, sizes in (("a.safetensors", [70, 3, 0, 129, 41]), ("b.safetensors", [200, 17, 5])):
        pos = 96  # past a header
        for k, size in enumerate(sizes):
            nbytes = size * KiB + k
            metas.append(TensorMeta(f"{file}:{k}", file, torch.uint8, (nbytes,), pos, pos + nbytes))
            pos += nbytes + (8 if k % 2 else 0)
    return metas


def _covered(tensors: list[TensorMeta], chunks: list[Chunk], alignment: int) -> None:
    """Each tensor's bytes come from its own file's chunks, once each, in order."""
    seen: dict[int, list[tuple[int, int]]] = {}
    for chunk in chunks:
        assert chunk.offset % alignment == 0 and chunk.length % alignment == 0
        assert chunk.needed <= chunk.length
        for piece in chunk.pieces:
            meta = tensors[piece.tensor]
            assert meta.file == chunk.file
            assert chunk.offset + piece.chunk_offset == meta.start + piece.tensor_offset
            assert piece.chunk_offset + piece.nbytes <= chunk.needed
            seen.setdefault(piece.tensor, []).append((piece.tensor_offset, piece.nbytes))
    for index, meta in enumerate(tensors):
        spans = seen.get(index, [])
        assert sum(n for _, n in spans) == meta.nbytes, meta.name
        assert [o for o, _ in spans] == [sum(n for _, n in spans[:i]) for i in range(len(spans))]


@pytest.mark.parametrize("alignment", [1, 4 * KiB])
def test_chunks_cover_every_byte_once(alignment: int) -> None:
    tensors = _tensors()
    chunks = plan_chunks(tensors, 64 * KiB, alignment)
    _covered(tensors, chunks, alignment)
    assert all(c.needed - c.pieces[0].chunk_offset <= 64 * KiB for c in chunks)


@pytest.mark.parametrize("alignment", [1, 4 * KiB])
def test_the_last_bytes_are_read_in_small_chunks(alignment: int) -> None:
    """Chunks that start within the plan's last tail_bytes hold at most tail_chunk_bytes, so
    readers taking the next chunk run out of work together; earlier ones stay large."""
    tensors = _tensors()
    total = sum(t.nbytes for t in tensors)
    plain = plan_chunks(tensors, 64 * KiB, alignment)
    chunks = plan_chunks(
        tensors, 64 * KiB, alignment, tail_bytes=150 * KiB, tail_chunk_bytes=8 * KiB
    )
    _covered(tensors, chunks, alignment)
    left = total
    small = 0
    for chunk in chunks:
        limit = 8 * KiB if left <= 150 * KiB else 64 * KiB
        assert chunk.needed - chunk.pieces[0].chunk_offset <= limit
        small += limit == 8 * KiB
        left -= chunk.payload
    assert small >= (150 - 64) // 8  # the chunk under way when the tail began may be large
    assert len(chunks) > len(plain)
    # the chunks before the tail are the plain plan's
    big = [(c.file, c.offset, c.needed) for c in chunks if c.needed > 8 * KiB]
    assert big == [(c.file, c.offset, c.needed) for c in plain[: len(big)]]


def test_chunk_sizes_must_be_aligned() -> None:
    with pytest.raises(ValueError, match="multiple of 4096"):
        plan_chunks(_tensors(), 64 * KiB, 4 * KiB, tail_bytes=1, tail_chunk_bytes=1000)
    with pytest.raises(ValueError, match="multiple of 4096"):
        plan_chunks(_tensors(), 1000, 4 * KiB)
