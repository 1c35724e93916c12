"""Streaming safetensors weights from a Source onto a device.

    source --(reader threads: pread / range GET, GIL released)--> ring slot (pinned host memory)
           --(the same reader: async H2D on its own stream)--> destination bytes on the device

Mapped copiers (StreamOptions.mapped_copiers: a quarter of the threads) take chunks of warm
local files beside the readers and skip the ring: the chunk's pages in the page cache are
registered with CUDA and copied to the device from there.

Python only plans ranges and enqueues copies; bytes are moved by the kernel, obstore and the
copy engine. The loading thread receives finished tensors and orders them before later work.
Onto the CPU from local files there is no ring: reads land in the tensors directly. A tensor
whose destination is known (a model parameter, or rows of a fused one) is written in place; when
the checkpoint's dtype differs it lands in a device staging tensor and is cast there. Tensors
without a destination are materialised on the device for the caller to place.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import torch

from ember.envflags import env_count, env_flag
from ember.errors import ModelLoadError
from ember.loader import mapped_pages, pagecache, pinned, workers
from ember.loader.files import INDEX_FILE, weight_files
from ember.loader.header import TensorMeta, read_header
from ember.loader.plan import Chunk, plan_chunks
from ember.loader.ring import HostRing
from ember.loader.source import Mapping, Source

log = logging.getLogger(__name__)

MiB = 1024 * 1024

Progress = Callable[[int, int], None]  # (bytes done, bytes total)
Resolve = Callable[[TensorMeta], "torch.Tensor | None"]


@dataclass(slots=True)
class StreamOptions:
    chunk_bytes: int = 32 * MiB
    threads: int | None = None  # None: the source's concurrency
    # ring slots, at least one a reader (each holds one while it reads and copies); None:
    # threads + 4, so a reader rarely finds the oldest free slot still being copied from
    slots: int | None = None
    # the chunks that start within the load's last `threads` x chunk_bytes are at most this
    # large, so the readers run out of bytes together instead of one reading a whole chunk
    # while the rest wait; 0: every chunk chunk_bytes. None: an eighth of chunk_bytes with
    # EMBER_LOAD_TAPER=1 (slower on an H100 at 20 slots, docs/benchmarks.md), else 0
    tail_chunk_bytes: int | None = None
    # threads that copy chunks of warm local files to the device straight out of the page cache
    # (each registers its chunk's pages with CUDA, read-only), in place of as many of the ring's
    # readers: the readers are bound by the CPU copying bytes out of the page cache, these by
    # registering pages, so the two add up (12 readers + 4 copiers: 34.4-39.1 GB/s against
    # 32.0-35.4 for 16 readers over three GPU calls, docs/benchmarks.md). None:
    # EMBER_MAPPED_COPIERS, else a quarter of the threads; 0 turns them off
    mapped_copiers: int | None = None

    def copiers(self, threads: int) -> int:
        """Mapped copiers among `threads`: the option, else EMBER_MAPPED_COPIERS, else a
        quarter of them; always fewer than `threads` (one reader stays)."""
        if self.mapped_copiers is not None:
            asked = max(0, self.mapped_copiers)
        else:
            asked = env_count("EMBER_MAPPED_COPIERS", threads // 4)
        return min(asked, max(0, threads - 1))

    def tail_chunk(self, alignment: int) -> int:
        """The tail chunks' size for a source of `alignment` (chunk_bytes where there is no
        taper)."""
        size = self.tail_chunk_bytes
        if size is None:
            size = self.chunk_bytes // 8 if env_flag("EMBER_LOAD_TAPER", False) else 0
        if size <= 0:
            return self.chunk_bytes
        return min(self.chunk_bytes, max(alignment, size - size % alignment))


@dataclass(slots=True)
class LoadStats:
    bytes: int = 0
    seconds: float = 0.0
    tensors: int = 0
    files: int = 0
    pinned_slots: int = 0  # ring slots the load pinned itself (not pinned ahead)
    pin_seconds: float = 0.0  # the readers' time spent pinning them, summed
    mapped_bytes: int = 0  # bytes copied straight out of the page cache (mapped copiers)

    @property
    def gb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0


class _Target:
    """Where one tensor's bytes go while it streams."""

    __slots__ = ("bytes", "dest", "events", "fresh", "meta", "remaining", "staging")

    def __init__(self, meta: TensorMeta, dest: torch.Tensor | None) -> None:
        self.meta = meta
        self.dest = dest  # the final home (a parameter view), or None: materialise
        self.staging: torch.Tensor | None = None  # checkpoint-dtype tensor awaiting a cast
        self.bytes: torch.Tensor | None = None  # flat uint8 view that pieces are copied into
        self.remaining = meta.nbytes
        self.fresh = dest is None  # dest will be a tensor allocated here, handed to the caller
        self.events: list[torch.cuda.Event] = []  # recorded after each copy into it (CUDA)


class SafetensorsStreamer:
    """Reads every header at construction (so bad files fail before anything is allocated);
    `stream()` then moves the bytes. One streamer streams once.

    `start()` may begin the reads before `stream()` knows where the bytes go (while the model
    is built): the readers fill the ring and wait, and copy once `stream()` has the
    destinations. `close()` stops reads that no `stream()` took over.
    """

    def __init__(
        self,
        source: Source,
        device: torch.device | str,
        *,
        options: StreamOptions | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.source = source
        self.device = _normalize(torch.device(device))
        self.options = options or StreamOptions()
        self.progress = progress
        self.files, weight_map = weight_files(source)
        self.tensors = _read_headers(source, self.files, weight_map)
        self.total_bytes = sum(t.nbytes for t in self.tensors)
        self.stats = LoadStats(files=len(self.files), tensors=len(self.tensors))
        self._readers: _Readers | None = None  # started early, not yet taken over by stream()
        self._began: float | None = None  # when start() began reading
        # set once this load's readers run with their destinations (or the load is over): work
        # beside the load that needs the GIL waits for it, off the readers' start
        self.reading = threading.Event()

    def start(self) -> None:
        """Begin reading into the ring now; the copies wait for `stream()`. Nothing to do for a
        load with no ring (onto the CPU from local files)."""
        if self._began is not None or not self._through_ring():
            return
        self._began = time.perf_counter()
        self._readers = self._open_readers()
        if self._readers is not None:
            self._readers.start()

    def close(self) -> None:
        """Stop the readers that `start()` began if no `stream()` took them over (the model's
        build failed); every slot is given back."""
        readers, self._readers = self._readers, None
        self._began = None  # a later stream() reads afresh
        self.reading.set()
        if readers is not None:
            readers.stop()

    def stream(
        self, resolve: Resolve | None = None
    ) -> Generator[tuple[str, torch.Tensor], None, None]:
        """(name, tensor on the device) for every checkpoint tensor, each yielded once its bytes
        are in place (on CUDA: ordered before later work on the current stream).

        `resolve(meta)` may name the tensor's destination: a contiguous tensor on the device of
        the checkpoint's shape; it is then filled in place and yielded itself (one of another
        shape is a ModelLoadError naming the file and tensor). Returns None to get a fresh
        tensor in the checkpoint's dtype instead.
        """
        start = self._began if self._began is not None else time.perf_counter()
        targets = [_Target(m, self._destination(m, resolve)) for m in self.tensors]
        for target in targets:
            if target.remaining == 0:
                yield target.meta.name, self._finish(target)
        yield from self._move(targets)
        self.stats.bytes = self.total_bytes
        self.stats.seconds = time.perf_counter() - start
        self.source.loaded()

    def _destination(self, meta: TensorMeta, resolve: Resolve | None) -> torch.Tensor | None:
        dest = resolve(meta) if resolve is not None else None
        if dest is None:
            return None
        if tuple(dest.shape) != meta.shape:  # before a byte is read
            raise ModelLoadError(
                f"tensor '{meta.name}' in '{self.source.location(meta.file)}' has shape "
                f"{list(meta.shape)} but the model built from config.json expects "
                f"{list(dest.shape)}; the weights do not match this config.json"
            )
        if dest.device != self.device or not dest.is_contiguous():
            return None
        if _kind(dest.dtype) != _kind(meta.dtype):
            raise ModelLoadError(
                f"tensor '{meta.name}' in '{self.source.location(meta.file)}' is stored as "
                f"{meta.dtype} but the model expects {dest.dtype}; the weights do not match "
                "this architecture"
            )
        return dest

    def _through_ring(self) -> bool:
        return self.device.type == "cuda" or self.source.local_dir() is None

    def _open_readers(self) -> _Readers | None:
        """The load's readers through a new ring, not started; None if there is nothing to
        read."""
        opts = self.options
        alignment = self.source.alignment
        threads = max(1, opts.threads or self.source.concurrency)
        chunks = plan_chunks(
            self.tensors,
            opts.chunk_bytes,
            alignment,
            tail_bytes=threads * opts.chunk_bytes,
            tail_chunk_bytes=opts.tail_chunk(alignment),
        )
        if not chunks:
            return None
        threads = min(threads, len(chunks))
        slots = max(threads, min(opts.slots or threads + 4, len(chunks)))
        copiers = opts.copiers(threads)
        if copiers and any(self.source.mapped(f) is None for f in {c.file for c in chunks}):
            copiers = 0  # a file that is not local or not in the page cache: the ring reads all
        # Copiers take the place of readers (on the H200, 14 readers + 2 copiers moved the 8B at
        # 51.1 GB/s where 16 + 2 gave 45.9: docs/benchmarks.md); the ring keeps its size.
        threads -= copiers
        ring = HostRing(slots, opts.chunk_bytes, self.device)
        return _Readers(self, ring, chunks, threads, copiers)

    def _move(self, targets: list[_Target]) -> Iterator[tuple[str, torch.Tensor]]:
        if not self._through_ring():
            yield from self._move_direct(targets)
            return
        readers, self._readers = self._readers, None  # those start() began, if it did
        began = readers is not None
        if readers is None:
            readers = self._open_readers()
        if readers is None:  # nothing to read
            return
        done_bytes = 0
        self._report(0)
        try:
            readers.bind(targets)
            if not began:  # bound first: every reader copies its first chunk as soon as read
                readers.start()
            self.reading.set()
            for payload, complete in readers.results():
                done_bytes += payload
                self._report(done_bytes)
                for target in complete:
                    yield target.meta.name, self._finish(target)
            self.stats.pinned_slots = readers.ring.pinned_here
            self.stats.pin_seconds = readers.ring.pin_seconds
            self.stats.mapped_bytes = readers.mapped_bytes
        finally:
            readers.stop()  # no copy may still read the ring when it is freed

    def _move_direct(self, targets: list[_Target]) -> Iterator[tuple[str, torch.Tensor]]:
        """Into host memory from local files: each tensor's bytes are read by the reader threads
        straight into where they land (no ring, no second copy), in reads of at most
        chunk_bytes. Tensors get their landing as their first read is queued, and at most two
        reads a thread are queued, so a dtype cast holds staging for few tensors at a time."""
        self.reading.set()
        opts = self.options
        reads = deque(
            (target, offset, min(opts.chunk_bytes, target.remaining - offset))
            for target in targets
            for offset in range(0, target.remaining, opts.chunk_bytes)
        )
        threads = max(1, min(opts.threads or self.source.concurrency, len(reads)))
        pending: dict[Future[None], tuple[_Target, int]] = {}
        done_bytes = 0
        self._report(0)
        pool = ThreadPoolExecutor(threads, thread_name_prefix="ember-load")
        try:
            while reads or pending:
                while reads and len(pending) < 2 * threads:
                    target, offset, nbytes = reads.popleft()
                    if target.bytes is None:
                        target.bytes = self._landing(target)
                    future = pool.submit(self._read_direct, target, offset, nbytes)
                    pending[future] = (target, nbytes)
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    target, nbytes = pending.pop(future)
                    future.result()
                    target.remaining -= nbytes
                    done_bytes += nbytes
                    self._report(done_bytes)
                    if target.remaining == 0:
                        yield target.meta.name, self._finish(target)
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _read_direct(self, target: _Target, offset: int, nbytes: int) -> None:
        assert target.bytes is not None
        view = target.bytes[offset : offset + nbytes].numpy().data
        start = target.meta.start + offset
        got = self.source.read_into(target.meta.file, start, view)
        if got < nbytes:
            raise self._truncated(target.meta.file, start + got, start + nbytes)

    def _read(self, chunk: Chunk, into: memoryview) -> None:
        got = self.source.read_into(chunk.file, chunk.offset, into[: chunk.length])
        if got < chunk.needed:
            raise self._truncated(chunk.file, chunk.offset + got, chunk.offset + chunk.needed)

    def _truncated(self, file: str, ended: int, wanted: int) -> ModelLoadError:
        return ModelLoadError(
            f"cannot read weights from '{self.source.location(file)}': it ended at byte "
            f"{ended}, before byte {wanted} that its header promises; the file is truncated, "
            "fetch it again"
        )

    def _landing(self, target: _Target) -> torch.Tensor:
        """The flat byte view that the tensor's pieces land in (allocated on the calling
        reader's stream)."""
        meta = target.meta
        if target.dest is not None and target.dest.dtype == meta.dtype:
            return _as_bytes(target.dest)
        tensor = torch.empty(meta.shape, dtype=meta.dtype, device=self.device)
        if target.dest is not None:
            target.staging = tensor
        else:
            target.dest = tensor
        return _as_bytes(tensor)

    def _finish(self, target: _Target) -> torch.Tensor:
        """The tensor, complete: on CUDA the current stream waits for every copy into it, and a
        dtype cast runs there."""
        meta = target.meta
        if target.dest is None:  # an empty tensor with no destination
            target.dest = torch.empty(meta.shape, dtype=meta.dtype, device=self.device)
        result = target.dest
        current = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        if current is not None:
            for event in target.events:
                current.wait_event(event)
        if target.staging is not None:
            result.copy_(target.staging)  # the dtype cast, on the device
            if current is not None:  # allocated on a reader's stream, last used on this one
                target.staging.record_stream(current)
            target.staging = None
        target.bytes = None
        target.events.clear()
        if current is not None and target.fresh:
            result.record_stream(current)
        return result

    def _report(self, done: int) -> None:
        if self.progress is not None:
            self.progress(done, self.total_bytes)


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).view(torch.uint8)


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    return "float" if dtype.is_floating_point else "int"


def _normalize(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _read_headers(source: Source, files: list[str], weight_map: dict[str, str]) -> list[TensorMeta]:
    if source.local_dir() is not None or len(files) <= 1:
        # one small read and a JSON parse each, under the GIL: a pool's threads only add their
        # start (the 8B's 4 headers: 4.8-5.3 ms in turn against 11-13 ms on 4 threads)
        per_file = [read_header(source, f) for f in files]
    else:  # an object store's round trips overlap
        with ThreadPoolExecutor(min(len(files), source.concurrency)) as pool:
            per_file = list(pool.map(lambda f: read_header(source, f), files))
    tensors: list[TensorMeta] = []
    seen: dict[str, str] = {}
    for metas in per_file:
        for meta in metas:
            if meta.name in seen:
                raise ModelLoadError(
                    f"tensor '{meta.name}' appears in both '{source.location(seen[meta.name])}' "
                    f"and '{source.location(meta.file)}'; the shards do not belong together"
                )
            seen[meta.name] = meta.file
            tensors.append(meta)
    for name, file in sorted(weight_map.items()):
        if seen.get(name) != file:
            raise ModelLoadError(
                f"tensor '{name}' is listed in '{source.location(INDEX_FILE)}' under '{file}' but "
                f"that file does not hold it; the shards do not match the index"
            )
    return tensors


_Finished = tuple[int, list[_Target]]  # (payload bytes of a chunk, tensors it completed)


class _Readers:
    """The reader threads of one load through the ring. Each takes the next chunk, reads it into
    a free slot and enqueues the slot's copies itself (on CUDA on a stream of its own), so no
    chunk waits for another thread to pass its bytes on; the loading thread only receives what
    they finished. On the H200, threads that copied their own chunks moved 16 GB from a warm
    page cache at 34.7 GB/s where handing every chunk to the loading thread gave 31.3; this
    streamer then gave 37.6-44.6 GB/s, at 93-101% of such threads in the same run
    (bench_stream_paths.py, docs/benchmarks.md)."""

    def __init__(
        self,
        streamer: SafetensorsStreamer,
        ring: HostRing,
        chunks: list[Chunk],
        threads: int,
        copiers: int = 0,
    ) -> None:
        self._streamer = streamer
        self.ring = ring
        self._chunks = chunks
        self._targets: list[_Target] = []
        self._threads = threads
        self._copiers = copiers  # mapped copiers (StreamOptions.mapped_copiers), after bind
        self.mapped_bytes = 0  # payload they copied
        self._registered: list[int] = []  # addresses the copiers registered, undone after
        self._owners: dict[str, object] = {}  # file -> what keeps its mapping in place
        self._refused = False  # a registration failed (warned once)
        self._lock = threading.Lock()  # the next chunk, the held chunks, landings and counts
        self._next = 0
        self._stopping = threading.Event()
        self._bound = threading.Event()  # bind() was called (or the load stops)
        self._copying = False  # the destinations are known and the readers' streams wait
        # chunks read into slots before the destinations were known, to copy once they are
        self._held: deque[tuple[Chunk, int]] = deque()
        self._done: queue.SimpleQueue[_Finished | BaseException | None] = queue.SimpleQueue()
        # a CUDA stream per thread, made here so that `bind` may come before `start`
        self._streams: list[torch.cuda.Stream] = []
        if ring.cuda:
            device = streamer.device
            self._streams = [torch.cuda.Stream(device) for _ in range(threads + copiers)]
        self._wait: Callable[[], object] | None = None  # until every thread's task returned

    def start(self) -> None:
        """The readers begin: before `bind` they read chunks into free slots until the ring is
        full, and copy nothing. Mapped copiers wait for `bind`."""
        works = [self._read_chunks] * self._threads + [self._map_chunks] * self._copiers
        streams: list[torch.cuda.Stream | None] = list(self._streams) or [None] * len(works)
        self._wait = workers.readers.run(
            [
                partial(self._guarded, work, stream)
                for work, stream in zip(works, streams, strict=True)
            ]
        )

    def bind(self, targets: list[_Target]) -> None:
        """Where the chunks' bytes go; the readers copy from now on, what they hold first.
        Called on the loading thread, before or after `start`: on CUDA every reader's stream
        first waits for its current stream, which the destinations were allocated on (no reader
        has enqueued anything yet)."""
        self._targets = targets
        if self.ring.cuda:
            current = torch.cuda.current_stream(self._streamer.device)
            for stream in self._streams:
                stream.wait_stream(current)
        with self._lock:
            self._copying = True
        self._bound.set()

    def results(self) -> Iterator[_Finished]:
        """(payload bytes, tensors now complete) for every chunk, as the readers finish them;
        a reader's error is raised here."""
        running = self._threads + self._copiers
        while running:
            item = self._done.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item

    def stop(self) -> None:
        """Readers finish the read in hand and end; every copy they enqueued completes. The
        copiers' registrations are undone later, off the load's path and the engine's start
        (mapped_pages.undo_later; undone behind each chunk inside the load, they made the
        copiers slower than the ring alone: docs/benchmarks.md)."""
        self._stopping.set()
        self._bound.set()  # readers waiting for destinations that will not come
        if self._wait is not None:
            self._wait()
        for stream in self._streams:
            stream.synchronize()
        with self._lock:
            registered, self._registered = self._registered, []
            owners, self._owners = list(self._owners.values()), {}
        if registered:
            mapped_pages.undo_later(registered, owners)

    def _guarded(
        self, work: Callable[[torch.cuda.Stream | None], None], stream: torch.cuda.Stream | None
    ) -> None:
        """A thread's `work` (a reader's or a mapped copier's) on `stream`: an error is handed
        to the loading thread, which raises it, and the thread's end is always reported."""
        try:
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                work(stream)
        except BaseException as e:
            self._stopping.set()
            self._done.put(e)
        finally:
            self._done.put(None)

    def _read_chunks(self, stream: torch.cuda.Stream | None) -> None:
        """A reader: take the next chunk, read it into a ring slot and copy it (or hold it
        until `bind`)."""
        while (job := self._next_job()) is not None:
            chunk, slot, read = job
            if not read:
                if not self._fill(chunk, slot):
                    break
                if self._hold(chunk, slot):
                    continue
            self._done.put(self._copy(chunk, slot, stream))

    def _fill(self, chunk: Chunk, slot: int) -> bool:
        """Read the chunk into the slot; False, the slot given back, once the load stops."""
        try:
            self._streamer._read(chunk, self.ring.acquire(slot))
        except BaseException:
            self.ring.give(slot)
            raise
        if self._stopping.is_set():
            self.ring.give(slot)
            return False
        return True

    def _read_via_ring(self, chunk: Chunk, stream: torch.cuda.Stream | None) -> bool:
        """A copier's chunk read into a ring slot and copied as a reader would; False once the
        load stops."""
        slot = self.ring.take_waiting(self._stopping)
        if slot is None or not self._fill(chunk, slot):
            return False
        self._done.put(self._copy(chunk, slot, stream))
        return True

    def _next_job(self) -> tuple[Chunk, int, bool] | None:
        """(chunk, its slot, whether the slot holds its bytes already), None when the reader is
        done. Once copying, held chunks go first, and a free slot is always there: every slot
        is held or in one reader's hands, and held ones are taken before new ones. Before,
        a reader takes only a slot that is free and otherwise waits for `bind`."""
        while not self._stopping.is_set():
            with self._lock:
                if self._copying and self._held:
                    chunk, slot = self._held.popleft()
                    return chunk, slot, True
                if self._next < len(self._chunks):
                    free = self.ring.take() if self._copying else self.ring.try_take()
                    if free is not None:
                        self._next += 1
                        return self._chunks[self._next - 1], free, False
                elif self._copying or not self._held:
                    return None  # (a reader stays while chunks are held for it to copy)
            self._bound.wait()  # the ring is full of held chunks, or they wait for bind()
        return None

    def _hold(self, chunk: Chunk, slot: int) -> bool:
        """Keep a chunk read before `bind` for whichever reader copies it; False once
        copying (the reader copies it now)."""
        with self._lock:
            if not self._copying:
                self._held.append((chunk, slot))
                return True
        return False

    def _copy(self, chunk: Chunk, slot: int, stream: torch.cuda.Stream | None) -> _Finished:
        ring = self.ring
        try:
            self._enqueue(chunk, ring.tensor(slot), stream)
            event = ring.mark_copied(slot, stream)
        finally:
            ring.give(slot)
        return self._account(chunk, event)

    def _enqueue(self, chunk: Chunk, src: torch.Tensor, stream: torch.cuda.Stream | None) -> None:
        """Every piece of the chunk copied from `src` (the chunk's bytes on the host) to where
        it lands: enqueued on `stream` without waiting where there is one, else copied before
        this returns."""
        lands = self._landings(chunk)
        for piece, land in zip(chunk.pieces, lands, strict=True):
            land[piece.tensor_offset : piece.tensor_offset + piece.nbytes].copy_(
                src[piece.chunk_offset : piece.chunk_offset + piece.nbytes],
                non_blocking=stream is not None,
            )

    def _account(self, chunk: Chunk, event: torch.cuda.Event | None) -> _Finished:
        """The chunk's bytes counted against its tensors, whose copies complete with `event`
        (None: they are done); returns the chunk's payload and the tensors it completed."""
        complete: list[_Target] = []
        with self._lock:
            for piece in chunk.pieces:
                target = self._targets[piece.tensor]
                if event is not None:
                    target.events.append(event)
                target.remaining -= piece.nbytes
                if target.remaining == 0:
                    complete.append(target)
        return chunk.payload, complete

    def _map_chunks(self, stream: torch.cuda.Stream | None) -> None:
        """A mapped copier: once bound, take the next chunk, register its pages in the page
        cache (read-only) and copy them to the device from there. The registrations are undone
        after the load, off its path (`stop`). A chunk whose pages are not all in the page cache
        yet (a cold load, or one beside the prefetch) is read through the ring instead:
        registering would fault its pages in one at a time (`ember serve` from a cold cache:
        weights phase 7.7-8.5 s with copiers against 6.8-7.4 s without). A chunk that cannot
        be registered goes through the ring too, and the copier reads through the ring from
        then on (the ring has a slot for every thread), so a platform that refuses the
        registration loads at the readers' full number."""
        while (chunk := self._next_mapped()) is not None:
            span = self._mapped_span(chunk)
            if span is not None and pagecache.resident(span[1], span[2]) is False:
                if not self._read_via_ring(chunk, stream):
                    return
                continue
            address = self._register(chunk, span)
            if address is None:
                if self._read_via_ring(chunk, stream):
                    self._read_chunks(stream)
                return
            self._enqueue(chunk, mapped_pages.host_view(address, chunk.needed), stream)
            event = None
            if stream is not None:
                event = torch.cuda.Event()
                event.record(stream)
            with self._lock:
                self.mapped_bytes += chunk.payload
            self._done.put(self._account(chunk, event))

    def _next_mapped(self) -> Chunk | None:
        """The next chunk for a mapped copier once the destinations are known; None when there
        is none left or the load stops. (Registering before `bind` held up `bind` itself on the
        H100: registrations and the streams' waits take the same driver lock.)"""
        while not self._stopping.is_set():
            with self._lock:
                if self._copying:
                    if self._next < len(self._chunks):
                        self._next += 1
                        return self._chunks[self._next - 1]
                    return None
            self._bound.wait()
        return None

    def _mapped_span(self, chunk: Chunk) -> tuple[Mapping, int, int] | None:
        """(its file's mapping, address, bytes) of the chunk, up to the chunk's end or the
        file's; None where the file is not mapped or is shorter than its header says (the
        plain read reports that)."""
        mapping = self._streamer.source.mapped(chunk.file)
        if mapping is None or chunk.offset + chunk.needed > mapping.size:
            return None
        end = min(chunk.offset + chunk.length, mapping.size)
        return mapping, mapping.address + chunk.offset, end - chunk.offset

    def _register(self, chunk: Chunk, span: tuple[Mapping, int, int] | None) -> int | None:
        """The address of the chunk's bytes (`span`, from `_mapped_span`), its pages now
        registered with CUDA; None where there is no span or registering fails."""
        if span is None:
            return None
        mapping, address, nbytes = span
        try:
            pinned.register_read_only(address, mapped_pages.whole_pages(nbytes))
        except (RuntimeError, OSError) as e:
            with self._lock:
                first, self._refused = not self._refused, True
            if first:  # once a load: every copier meets the same refusal
                log.warning(
                    "copying straight out of the page cache failed (%s); reading instead "
                    "(EMBER_MAPPED_COPIERS=0 skips trying)",
                    e,
                )
            return None
        with self._lock:
            self._registered.append(address)
            self._owners[chunk.file] = mapping.owner  # mapped until the registration is undone
        return address

    def _landings(self, chunk: Chunk) -> list[torch.Tensor]:
        lands: list[torch.Tensor] = []
        with self._lock:
            for piece in chunk.pieces:
                target = self._targets[piece.tensor]
                if target.bytes is None:
                    target.bytes = self._streamer._landing(target)
                lands.append(target.bytes)
        return lands
