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


def plan_chunks(tensors: Sequence[TensorMeta], chunk_bytes: int, alignment: int) -> list[Chunk]:
    """Chunks covering every non-empty tensor, file by file in offset order.

    Gaps between tensors (padding) are read along rather than split on; a chunk starts where
    the next tensor byte would not fit the current one.
    """
    if chunk_bytes % alignment:
        raise ValueError(f"chunk size {chunk_bytes} is not a multiple of alignment {alignment}")
    chunks: list[Chunk] = []
    order = sorted(range(len(tensors)), key=lambda i: (tensors[i].file, tensors[i].start))
    current: Chunk | None = None
    for index in order:
        meta = tensors[index]
        pos = meta.start
        while pos < meta.end:
            if current is None or current.file != meta.file or pos >= current.offset + chunk_bytes:
                current = Chunk(meta.file, pos - pos % alignment, 0, 0)
                chunks.append(current)
            take = min(meta.end, current.offset + chunk_bytes) - pos
            current.pieces.append(Piece(index, pos - current.offset, pos - meta.start, take))
            pos += take
            current.needed = pos - current.offset
    for chunk in chunks:
        chunk.length = -(-chunk.needed // alignment) * alignment
    return chunks
