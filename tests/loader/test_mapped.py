"""Mapped copiers: chunks of warm local files copied straight out of the page cache (their pages
registered with CUDA, read-only) beside the ring's readers. CUDA's registration is replaced by a
recorder here; on the CPU the copies are plain copies out of the mapping."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ember.envflags import env_count
from ember.errors import ModelLoadError
from ember.loader import (
    SafetensorsStreamer,
    StreamOptions,
    TensorMeta,
    mapped_pages,
    pagecache,
    pinned,
)
from ember.loader.local import LocalSource
from ember.loader.mapped_pages import wait_for_unregistered
from ember.loader.pagecache import evict
from ember.loader.source import Mapping

from .helpers import random_tensors
from .test_streamer import CountingSource, _assert_same, _readers, _save_sharded

CPU = torch.device("cpu")
KiB = 1024
PAGE = 4096


class MappedSource(CountingSource):
    """A source read through the ring (no local directory, as on a GPU) whose files the
    mapped copiers may map, unless `unmapped` names them."""

    def __init__(self, inner: LocalSource, delay_s: float = 0.0, unmapped: str = "") -> None:
        super().__init__(inner, delay_s=delay_s)
        self.unmapped = unmapped

    def mapped(self, name: str) -> Mapping | None:
        return None if name == self.unmapped else self.inner.mapped(name)

    def close(self) -> None:
        self.inner.close()


class Registrations:
    """Stands in for CUDA's registration: checks every range is whole pages and overlaps no
    range still registered, and that each is undone once."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.live: dict[int, int] = {}  # address -> bytes
        self.count = 0
        self.undone = 0
        self.lock = threading.Lock()

    def register(self, address: int, nbytes: int) -> None:
        if self.fail:
            raise RuntimeError("cudaHostRegister returned 1")
        assert address % PAGE == 0 and nbytes % PAGE == 0 and nbytes > 0
        with self.lock:
            for start, size in self.live.items():
                assert address + nbytes <= start or start + size <= address, "overlap"
            self.live[address] = nbytes
            self.count += 1

    def unregister(self, address: int) -> None:
        with self.lock:
            assert address in self.live, "undone twice or never registered"
            del self.live[address]
            self.undone += 1


@pytest.fixture
def registrations(monkeypatch: pytest.MonkeyPatch) -> Iterator[Registrations]:
    record = Registrations()
    monkeypatch.setattr(pinned, "register_read_only", record.register)
    monkeypatch.setattr(pinned, "unregister", record.unregister)
    yield record
    wait_for_unregistered()  # no test's registrations are undone into the next one's recorder


def _options(copiers: int) -> StreamOptions:
    return StreamOptions(chunk_bytes=8 * KiB, threads=2, slots=3, mapped_copiers=copiers)


def test_copiers_and_readers_share_the_chunks_bytes_match(
    tmp_path: Path, registrations: Registrations
) -> None:
    """Sharded files, in-place destinations and dtype casts: the same bytes as safetensors, the
    chunks split between the ring's (slowed) readers and the copiers, and every registration
    undone by the end."""
    tensors = random_tensors(21)
    _save_sharded(tmp_path, tensors, shards=3)
    source = MappedSource(LocalSource(tmp_path), delay_s=0.002)
    dests: dict[str, torch.Tensor] = {}

    def resolve(meta: TensorMeta) -> torch.Tensor:
        dtype = torch.float32 if meta.dtype.is_floating_point else meta.dtype
        dests[meta.name] = torch.full(meta.shape, 7, dtype=dtype)
        return dests[meta.name]

    streamer = SafetensorsStreamer(source, CPU, options=_options(2))
    got = dict(streamer.stream(resolve))
    source.close()  # the mappings stay until their registrations are undone
    for name, want in tensors.items():
        assert got[name] is dests[name], name
        assert torch.equal(got[name], want.to(got[name].dtype)), name
    wait_for_unregistered()  # undone after the load, on a thread of their own
    assert registrations.count > 0 and not registrations.live
    assert registrations.undone == registrations.count
    assert 0 < streamer.stats.mapped_bytes < streamer.total_bytes
    assert source.data_reads > 0  # the ring's readers read the rest
    assert not _readers()


def test_without_copiers_nothing_is_mapped(tmp_path: Path, registrations: Registrations) -> None:
    save_file(random_tensors(22), str(tmp_path / "model.safetensors"))
    source = MappedSource(LocalSource(tmp_path))
    streamer = SafetensorsStreamer(source, CPU, options=_options(0))
    _assert_same(dict(streamer.stream()), load_file(str(tmp_path / "model.safetensors")))
    source.close()
    assert registrations.count == 0 and streamer.stats.mapped_bytes == 0


def test_copiers_follow_the_environment(
    tmp_path: Path, registrations: Registrations, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_file(random_tensors(23), str(tmp_path / "model.safetensors"))
    monkeypatch.setenv("EMBER_MAPPED_COPIERS", "3")
    source = MappedSource(LocalSource(tmp_path), delay_s=0.002)
    options = StreamOptions(chunk_bytes=8 * KiB, threads=2, slots=3)
    streamer = SafetensorsStreamer(source, CPU, options=options)
    _assert_same(dict(streamer.stream()), load_file(str(tmp_path / "model.safetensors")))
    source.close()
    assert registrations.count > 0 and streamer.stats.mapped_bytes > 0


def test_a_file_that_is_not_mapped_goes_through_the_ring(
    tmp_path: Path, registrations: Registrations
) -> None:
    """One cold (unmapped) file among the shards: the ring reads everything."""
    tensors = random_tensors(24)
    _save_sharded(tmp_path, tensors, shards=2)
    source = MappedSource(LocalSource(tmp_path), unmapped="model-00002-of-00002.safetensors")
    streamer = SafetensorsStreamer(source, CPU, options=_options(2))
    _assert_same(dict(streamer.stream()), tensors)
    source.close()
    assert registrations.count == 0 and streamer.stats.mapped_bytes == 0


def test_a_refused_registration_reads_the_chunk_instead(
    tmp_path: Path,
    registrations: Registrations,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Where CUDA refuses to register the page cache, each copier reads its chunk through the
    ring, as the readers do; the load warns once."""
    save_file(random_tensors(25), str(tmp_path / "model.safetensors"))
    registrations.fail = True
    source = MappedSource(LocalSource(tmp_path), delay_s=0.002)
    streamer = SafetensorsStreamer(source, CPU, options=_options(2))
    with caplog.at_level(logging.WARNING, logger="ember.loader.streamer"):
        got = dict(streamer.stream())
    source.close()
    _assert_same(got, load_file(str(tmp_path / "model.safetensors")))
    assert caplog.text.count("copying straight out of the page cache failed") == 1
    assert "EMBER_MAPPED_COPIERS=0" in caplog.text
    wait_for_unregistered()
    assert streamer.stats.mapped_bytes == 0 and not registrations.live


def test_copiers_refused_by_cuda_go_on_as_ring_readers(
    tmp_path: Path, registrations: Registrations
) -> None:
    """A platform that refuses the registration still loads with every thread reading: each
    copier reads its refused chunk, then takes ring slots like a reader."""
    save_file(random_tensors(33), str(tmp_path / "model.safetensors"))
    registrations.fail = True
    reads: Counter[int] = Counter()  # data reads by thread

    class Recording(MappedSource):
        def read_into(self, name: str, offset: int, out: memoryview) -> int:
            if offset >= PAGE:  # past the header
                reads[threading.get_ident()] += 1
            return super().read_into(name, offset, out)

    source = Recording(LocalSource(tmp_path), delay_s=0.005)
    options = StreamOptions(chunk_bytes=8 * KiB, threads=4, slots=4, mapped_copiers=2)
    streamer = SafetensorsStreamer(source, CPU, options=options)
    got = dict(streamer.stream())
    source.close()
    _assert_same(got, load_file(str(tmp_path / "model.safetensors")))
    # 2 readers and 2 former copiers, each reading many chunks (a copier that stopped after its
    # refused chunk would have read one)
    assert len(reads) == 4 and min(reads.values()) >= 2, reads
    assert streamer.stats.mapped_bytes == 0 and not _readers()


def test_chunks_not_in_the_page_cache_go_through_the_ring(
    tmp_path: Path, registrations: Registrations, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk some of whose pages are still on the disk (a cold load, or one beside the
    prefetch) is read through the ring by the copier that took it; the chunks already cached
    are registered and copied as before."""
    tensors = random_tensors(34)
    _save_sharded(tmp_path, tensors, shards=2)
    asked: list[int] = []
    resident = pagecache.resident

    def every_other(address: int, nbytes: int) -> bool | None:
        asked.append(nbytes)
        return resident(address, nbytes) and len(asked) % 2 == 0

    monkeypatch.setattr(pagecache, "resident", every_other)
    source = MappedSource(LocalSource(tmp_path), delay_s=0.002)
    streamer = SafetensorsStreamer(source, CPU, options=_options(2))
    _assert_same(dict(streamer.stream()), tensors)
    source.close()
    wait_for_unregistered()
    assert len(asked) >= 2 and registrations.count == len(asked) // 2
    assert streamer.stats.mapped_bytes > 0 and not registrations.live and not _readers()


def test_resident_tells_a_cached_range_from_an_evicted_one(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(bytes(range(256)) * 4096)  # 1 MiB, in the page cache once written
    source = LocalSource(tmp_path, direct=False)
    mapping = source.mapped("w.bin")
    assert mapping is not None
    assert pagecache.resident(mapping.address + 100, 300_000) is True  # unaligned start
    assert pagecache.resident(mapping.address, 0) is None
    evict(str(path))
    cold = pagecache.resident(mapping.address + 100, 300_000)
    if cold is not False:
        source.close()
        pytest.skip("this filesystem keeps the file cached (tmpfs?)")
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead past what is read
    os.pread(fd, 512 * KiB, 0)  # the front half, as a prefetch part-way through would leave it
    os.close(fd)
    assert pagecache.resident(mapping.address, 256 * KiB) is True
    assert pagecache.resident(mapping.address, mapping.size) is False  # its last page is not in
    source.close()


def test_a_copier_waits_for_a_slot_the_early_reads_hold(
    tmp_path: Path, registrations: Registrations, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads begun before the model's build can fill every ring slot with held chunks; a
    copier whose chunk must go through the ring then waits for a slot instead of failing."""
    save_file(random_tensors(36), str(tmp_path / "model.safetensors"))
    monkeypatch.setattr(pagecache, "resident", lambda address, nbytes: False)
    source = MappedSource(LocalSource(tmp_path))
    options = StreamOptions(chunk_bytes=8 * KiB, threads=3, slots=3, mapped_copiers=1)
    streamer = SafetensorsStreamer(source, CPU, options=options)
    streamer.start()
    opened = streamer._readers
    assert opened is not None
    assert _until(lambda: len(opened._held) == len(opened.ring))  # every slot holds a chunk
    _assert_same(dict(streamer.stream()), load_file(str(tmp_path / "model.safetensors")))
    source.close()
    assert registrations.count == 0 and not _readers()


def test_ring_take_waiting_gets_a_slot_given_back_or_stops() -> None:
    from ember.loader.ring import HostRing

    ring = HostRing(1, 8 * KiB, CPU)
    held = ring.take()
    stopping = threading.Event()
    got: list[int | None] = []
    waiter = threading.Thread(target=lambda: got.append(ring.take_waiting(stopping)))
    waiter.start()
    time.sleep(0.05)
    assert waiter.is_alive()  # no slot free yet
    ring.give(held)
    waiter.join(5)
    assert got == [held]
    stopping.set()
    assert ring.take_waiting(stopping) is None  # the only slot is taken and the load stops


def test_a_truncated_file_fails_with_its_name(tmp_path: Path, registrations: Registrations) -> None:
    """A file cut short after its header was read is never registered past its end: the
    copier's plain read reports it as the ring's readers would."""
    path = tmp_path / "model.safetensors"
    save_file(random_tensors(26), str(path))
    data = path.read_bytes()
    source = MappedSource(LocalSource(tmp_path), delay_s=0.05)  # the copiers get the last chunk
    streamer = SafetensorsStreamer(source, CPU, options=_options(4))
    path.write_bytes(data[: len(data) - 5000])  # the same file, shorter
    with pytest.raises(ModelLoadError, match=r"model\.safetensors.*truncated"):
        for _ in streamer.stream():
            pass
    source.close()
    wait_for_unregistered()
    assert not registrations.live and not _readers()


def test_a_copy_that_fails_ends_the_load_and_undoes_its_registrations(
    tmp_path: Path, registrations: Registrations, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_file(random_tensors(27), str(tmp_path / "model.safetensors"))

    def broken(*_: object) -> torch.Tensor:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(mapped_pages, "host_view", broken)
    source = MappedSource(LocalSource(tmp_path), delay_s=0.01)
    streamer = SafetensorsStreamer(source, CPU, options=_options(2))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        for _ in streamer.stream():
            pass
    source.close()
    wait_for_unregistered()
    assert registrations.count > 0 and not registrations.live and not _readers()


def test_local_files_are_mapped_only_when_read_buffered(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    (tmp_path / "w.bin").write_bytes(data)
    (tmp_path / "empty.bin").write_bytes(b"")
    warm = LocalSource(tmp_path, direct=False)
    mapped = warm.mapped("w.bin")
    assert mapped is not None and mapped.size == len(data) and mapped.address % PAGE == 0
    assert warm.mapped("w.bin") is mapped  # mapped once
    import ctypes

    assert ctypes.string_at(mapped.address + 1000, 16) == data[1000:1016]
    assert warm.mapped("empty.bin") is None
    warm.close()
    assert ctypes.string_at(mapped.address, 4) == data[:4]  # still mapped: its owner is held
    owner = weakref.ref(mapped.owner)
    del mapped
    gc.collect()
    assert owner() is None  # closed and let go of: unmapped
    cold = LocalSource(tmp_path, direct=True)
    assert cold.mapped("w.bin") is None  # read from the disk, not the page cache
    cold.close()


def test_env_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBER_X_COUNT", raising=False)
    assert env_count("EMBER_X_COUNT", 2) == 2
    monkeypatch.setenv("EMBER_X_COUNT", " 5 ")
    assert env_count("EMBER_X_COUNT", 2) == 5
    monkeypatch.setenv("EMBER_X_COUNT", "-3")
    assert env_count("EMBER_X_COUNT", 2) == 0
    monkeypatch.setenv("EMBER_X_COUNT", "many")
    assert env_count("EMBER_X_COUNT", 2) == 2


def test_copiers_take_the_place_of_readers(tmp_path: Path, registrations: Registrations) -> None:
    """As many threads as asked for in all: N copiers replace N readers; the ring keeps its
    size. Without mapped files there are no copiers and every thread reads."""
    save_file(random_tensors(28), str(tmp_path / "model.safetensors"))
    options = StreamOptions(chunk_bytes=8 * KiB, threads=6, slots=9, mapped_copiers=2)
    for unmapped, readers, copiers in (("", 4, 2), ("model.safetensors", 6, 0)):
        source = MappedSource(LocalSource(tmp_path), unmapped=unmapped)
        streamer = SafetensorsStreamer(source, CPU, options=options)
        streamer.start()
        opened = streamer._readers
        assert opened is not None
        assert (opened._threads, opened._copiers, len(opened.ring)) == (readers, copiers, 9)
        _assert_same(dict(streamer.stream()), load_file(str(tmp_path / "model.safetensors")))
        source.close()
    wait_for_unregistered()
    assert not registrations.live and not _readers()


def _until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)
    return predicate()


def test_registrations_are_undone_once_released(
    tmp_path: Path, registrations: Registrations
) -> None:
    """Undoing registrations takes CUDA's driver lock, so a load leaves them in place until
    `release()` (the engine calls it once ready), then they are undone on their thread."""
    save_file(random_tensors(31), str(tmp_path / "model.safetensors"))
    source = MappedSource(LocalSource(tmp_path), delay_s=0.002)
    streamer = SafetensorsStreamer(source, CPU, options=_options(2))
    _assert_same(dict(streamer.stream()), load_file(str(tmp_path / "model.safetensors")))
    source.close()
    time.sleep(0.05)
    assert registrations.live and registrations.undone == 0
    mapped_pages.release()
    assert _until(lambda: not registrations.live)
    assert registrations.undone == registrations.count
    wait_for_unregistered()


def test_registrations_nobody_releases_are_undone_after_a_while(
    tmp_path: Path, registrations: Registrations, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mapped_pages, "UNDO_AFTER_S", 0.05)
    save_file(random_tensors(32), str(tmp_path / "model.safetensors"))
    source = MappedSource(LocalSource(tmp_path), delay_s=0.002)
    streamer = SafetensorsStreamer(source, CPU, options=_options(2))
    _assert_same(dict(streamer.stream()), load_file(str(tmp_path / "model.safetensors")))
    source.close()
    assert registrations.count > 0
    assert _until(lambda: not registrations.live)
    wait_for_unregistered()
