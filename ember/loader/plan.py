"""Cutting files into large reads: each chunk is one range of one file that fills (at most) one
ring slot; a tensor may span several chunks, and a chunk may hold many small tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ember.loader.header import TensorMeta


@dataclass(slots=True)
class Piece:
    """Bytes [chunk_offset, chunk_offset + nbytes) of a chunk are bytes
    [tensor_offset, tensor_offset + nbytes) of tensor number `tensor`."""

    tensor: int
    chunk_offset: int
    tensor_offset: int
    nbytes: int


@dataclass(slots=True)
class Chunk:
    file: str
    offset: int  # bytes; a multiple of the plan's alignment
    length: int  # bytes to ask for: `needed` rounded up to the alignment (may pass the file's end)
    needed: int  # bytes from `offset` that the pieces use; a read returning fewer is truncated
    pieces: list[Piece] = field(default_factory=list)

    @property
    def payload(self) -> int:
        return sum(p.nbytes for p in self.pieces)


def plan_chunks(
    tensors: Sequence[TensorMeta],
    chunk_bytes: int,
    alignment: int,
    *,
    tail_bytes: int = 0,
    tail_chunk_bytes: int | None = None,
) -> list[Chunk]:
    """Chunks covering every non-empty tensor, file by file in offset order.

    Gaps between tensors (padding) are read along rather than split on; a chunk starts where
    the next tensor byte would not fit the current one. A chunk that starts with at most
    `tail_bytes` of tensor bytes left in the plan holds at most `tail_chunk_bytes`: readers
    that each take the next chunk then finish the load together, instead of one reading a
    whole large chunk while the others have nothing left to read.
    """
    tail_chunk = chunk_bytes if tail_chunk_bytes is None else tail_chunk_bytes
    for size in (chunk_bytes, tail_chunk):
        if size <= 0 or size % alignment:
            raise ValueError(f"chunk size {size} is not a positive multiple of {alignment}")
    chunks: list[Chunk] = []
    order = sorted(range(len(tensors)), key=lambda i: (tensors[i].file, tensors[i].start))
    left = sum(t.nbytes for t in tensors)  # tensor bytes not yet in a chunk
    current: Chunk | None = None
    limit = chunk_bytes  # the current chunk's size
    for index in order:
        meta = tensors[index]
        pos = meta.start
        while pos < meta.end:
            if current is None or current.file != meta.file or pos >= current.offset + limit:
                current = Chunk(meta.file, pos - pos % alignment, 0, 0)
                limit = tail_chunk if left <= tail_bytes else chunk_bytes
                chunks.append(current)
            take = min(meta.end, current.offset + limit) - pos
            current.pieces.append(Piece(index, pos - current.offset, pos - meta.start, take))
            pos += take
            left -= take
            current.needed = pos - current.offset
    for chunk in chunks:
        chunk.length = -(-chunk.needed // alignment) * alignment
    return chunks
