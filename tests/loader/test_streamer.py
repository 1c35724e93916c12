"""The streamer gives back exactly what safetensors stores: every byte of every dtype and shape,
from single and sharded files, through rings of any size, in place and with casts."""

from __future__ import annotations

import json
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ember.errors import ModelLoadError
from ember.loader import SafetensorsStreamer, Source, StreamOptions, TensorMeta, workers
from ember.loader.local import LocalSource

from .helpers import random_tensors

CPU = torch.device("cpu")
KiB = 1024

OPTIONS = {
    "small-chunks": StreamOptions(chunk_bytes=64 * KiB, threads=4, slots=3),
    "one-slot": StreamOptions(chunk_bytes=8 * KiB, threads=2, slots=1),
    "defaults": StreamOptions(),
}


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name, want in expected.items():
        have = got[name]
        assert have.dtype == want.dtype, name
        assert have.shape == want.shape, name
        assert torch.equal(_bytes(have), _bytes(want)), name


def _save_sharded(root: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    names = sorted(tensors)
    weight_map: dict[str, str] = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i::shards]}
        save_file(part, str(root / file))
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("direct", [None, True, False], ids=["auto-io", "direct-io", "buffered"])
@pytest.mark.parametrize("options", list(OPTIONS.values()), ids=list(OPTIONS))
def test_bytes_match_safetensors(tmp_path: Path, options: StreamOptions, direct: bool) -> None:
    save_file(random_tensors(0), str(tmp_path / "model.safetensors"))
    expected = load_file(str(tmp_path / "model.safetensors"))
    source = LocalSource(tmp_path, direct=direct)
    got = dict(SafetensorsStreamer(source, CPU, options=options).stream())
    source.close()
    _assert_same(got, expected)


def test_sharded_model_matches_safetensors(tmp_path: Path) -> None:
    tensors = random_tensors(1)
    _save_sharded(tmp_path, tensors, shards=3)
    expected: dict[str, torch.Tensor] = {}
    for file in sorted(tmp_path.glob("*.safetensors")):
        expected.update(load_file(str(file)))
    streamer = SafetensorsStreamer(LocalSource(tmp_path), CPU, options=OPTIONS["small-chunks"])
    assert len(streamer.files) == 3
    _assert_same(dict(streamer.stream()), expected)
    assert streamer.stats.bytes == sum(t.numel() * t.element_size() for t in tensors.values())


def test_unindexed_shards_are_all_read(tmp_path: Path) -> None:
    tensors = random_tensors(2)
    names = sorted(tensors)
    save_file({n: tensors[n] for n in names[:4]}, str(tmp_path / "a.safetensors"))
    save_file({n: tensors[n] for n in names[4:]}, str(tmp_path / "b.safetensors"))
    got = dict(SafetensorsStreamer(LocalSource(tmp_path), CPU).stream())
    _assert_same(got, tensors)


@pytest.mark.parametrize("ring", [False, True], ids=["local", "ring"])
def test_in_place_destinations_and_device_casts(tmp_path: Path, ring: bool) -> None:
    """Through the ring (a source with no local directory) several readers copy pieces of one
    tensor each, and the one that completes it hands it over."""
    tensors = random_tensors(3)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    dests: dict[str, torch.Tensor] = {}

    def resolve(meta: TensorMeta) -> torch.Tensor | None:
        if meta.name == "mid.f16":
            return None  # no destination: arrives as a fresh tensor
        # Floats land in float32 (a cast for bf16/f16/f8), everything else as stored.
        dtype = torch.float32 if meta.dtype.is_floating_point else meta.dtype
        dests[meta.name] = torch.full(meta.shape, 7, dtype=dtype)
        return dests[meta.name]

    options = OPTIONS["small-chunks"]
    source: Source = LocalSource(tmp_path)
    if ring:
        source = CountingSource(LocalSource(tmp_path))
        options = StreamOptions(chunk_bytes=8 * KiB, threads=4, slots=5)
    got = dict(SafetensorsStreamer(source, CPU, options=options).stream(resolve))
    assert got.keys() == tensors.keys()
    for name, want in tensors.items():
        if name == "mid.f16":
            assert got[name].dtype == torch.float16
            assert torch.equal(got[name], want)
            continue
        assert got[name] is dests[name], name  # filled in place, not copied again
        assert torch.equal(got[name], want.to(got[name].dtype)), name


def test_a_failed_read_ends_the_load_and_its_readers(tmp_path: Path) -> None:
    """A reader's error reaches the caller as itself, the other readers stop, and the ring
    gives every slot back."""
    save_file(random_tensors(8), str(tmp_path / "model.safetensors"))
    source = CountingSource(LocalSource(tmp_path), fail_at=5)
    streamer = SafetensorsStreamer(
        source, CPU, options=StreamOptions(chunk_bytes=8 * KiB, threads=3)
    )
    with pytest.raises(ModelLoadError, match="disk on fire"):
        for _ in streamer.stream():
            pass
    assert not _readers()
    assert source.data_reads < 40  # the readers stopped instead of reading on


def test_reads_are_large_not_per_tensor(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(4)
    tensors = {f"t{i}": torch.randn(256, generator=gen) for i in range(200)}  # 1 KiB each
    save_file(tensors, str(tmp_path / "model.safetensors"))
    source = CountingSource(LocalSource(tmp_path))
    options = StreamOptions(chunk_bytes=64 * KiB, threads=2, tail_chunk_bytes=0)
    got = dict(SafetensorsStreamer(source, CPU, options=options).stream())
    _assert_same(got, tensors)
    assert source.data_reads == 4  # 200 KiB of tensors in 64 KiB reads, not 200


def test_local_files_land_in_host_tensors_without_the_ring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Onto the CPU from a local directory, reads go straight into the tensors (the ring's
    second copy would halve the speed), split into reads of at most chunk_bytes."""
    import ember.loader.streamer as streamer_module

    def no_ring(*args: object) -> None:
        raise AssertionError("a CPU load from local files used the ring")

    monkeypatch.setattr(streamer_module, "HostRing", no_ring)
    save_file(random_tensors(7), str(tmp_path / "model.safetensors"))
    expected = load_file(str(tmp_path / "model.safetensors"))
    for options in OPTIONS.values():
        source = LocalSource(tmp_path)
        got = dict(SafetensorsStreamer(source, CPU, options=options).stream())
        source.close()
        _assert_same(got, expected)


def test_progress_rises_to_total_while_loading(tmp_path: Path) -> None:
    save_file(random_tensors(5), str(tmp_path / "model.safetensors"))
    seen: list[tuple[int, int, float]] = []
    source = CountingSource(LocalSource(tmp_path), delay_s=0.02)
    streamer = SafetensorsStreamer(
        source,
        CPU,
        options=StreamOptions(chunk_bytes=32 * KiB, threads=2),
        progress=lambda done, total: seen.append((done, total, time.monotonic())),
    )
    for _ in streamer.stream():
        pass
    dones = [d for d, _, _ in seen]
    assert len(seen) > 5
    assert dones[0] == 0
    assert dones == sorted(dones)
    assert dones[-1] == streamer.total_bytes
    assert {t for _, t, _ in seen} == {streamer.total_bytes}
    assert seen[-1][2] - seen[0][2] >= 0.05  # reported over the load, not all at the end


def test_threads_end_with_the_load(tmp_path: Path) -> None:
    save_file(random_tensors(6), str(tmp_path / "model.safetensors"))
    tensors = SafetensorsStreamer(LocalSource(tmp_path), CPU, options=OPTIONS["small-chunks"])
    stream = tensors.stream()
    while next(stream)[1].numel() == 0:  # empty tensors come first, before any read
        pass
    assert _readers()
    stream.close()  # a consumer that gives up (an error in load_weights) stops the readers
    assert not _readers()


def test_reads_begin_before_the_destinations_exist(tmp_path: Path) -> None:
    """start() fills the ring while the model is still being built (no destination exists
    yet); stream() then copies what was read into the destinations it resolves, in place."""
    tensors = random_tensors(9)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    source = CountingSource(LocalSource(tmp_path))
    options = StreamOptions(chunk_bytes=8 * KiB, threads=3, slots=5)
    streamer = SafetensorsStreamer(source, CPU, options=options)
    with closing(streamer):  # a failed check must not leave readers waiting
        _read_early_then_stream(streamer, source, tensors)
    assert not _readers()


def _read_early_then_stream(
    streamer: SafetensorsStreamer, source: CountingSource, tensors: dict[str, torch.Tensor]
) -> None:
    streamer.start()
    deadline = time.monotonic() + 10
    while source.data_reads < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    # a chunk in every slot of the ring (the first, at offset 0, is not counted), held until
    # the destinations come
    assert 4 <= source.data_reads <= 5 == len(streamer._readers.ring)  # type: ignore[union-attr]
    dests: dict[str, torch.Tensor] = {}

    def resolve(meta: TensorMeta) -> torch.Tensor:
        dests[meta.name] = torch.empty(meta.shape, dtype=meta.dtype)
        return dests[meta.name]

    got = dict(streamer.stream(resolve))
    _assert_same(got, tensors)
    assert all(got[name] is dests[name] for name in tensors)
    assert not _readers()


def test_a_model_read_whole_before_its_destinations_exist_still_lands(tmp_path: Path) -> None:
    """Fewer chunks than ring slots: every chunk is read and held before stream() binds the
    destinations, and the readers stay to copy them (none may leave with chunks held)."""
    tensors = random_tensors(13)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    source = CountingSource(LocalSource(tmp_path))
    options = StreamOptions(chunk_bytes=8 * KiB, threads=2, slots=4096)
    streamer = SafetensorsStreamer(source, CPU, options=options)
    with closing(streamer):
        streamer.start()
        slots = len(streamer._readers.ring)  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while source.data_reads < slots - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        reads = source.data_reads
        assert slots > 20 and reads >= slots - 1  # every chunk (the first is not counted)
        _assert_same(dict(streamer.stream()), tensors)
        assert source.data_reads == reads  # nothing read twice
    assert not _readers()


def test_reads_begun_for_a_load_that_never_streams_are_stopped(tmp_path: Path) -> None:
    save_file(random_tensors(10), str(tmp_path / "model.safetensors"))
    source = CountingSource(LocalSource(tmp_path))
    streamer = SafetensorsStreamer(
        source, CPU, options=StreamOptions(chunk_bytes=8 * KiB, threads=2)
    )
    with closing(streamer):
        streamer.start()
        assert _readers()
    # closed: the model's build failed
    assert not _readers()
    reads = source.data_reads
    assert reads <= 6  # at most the ring's slots (threads + 4) were read ahead
    # a later stream() reads afresh and gives every byte
    _assert_same(dict(streamer.stream()), load_file(str(tmp_path / "model.safetensors")))
    assert source.data_reads > reads


def test_a_read_that_fails_before_the_destinations_exist_fails_the_stream(
    tmp_path: Path,
) -> None:
    save_file(random_tensors(11), str(tmp_path / "model.safetensors"))
    source = CountingSource(LocalSource(tmp_path), fail_at=1)
    streamer = SafetensorsStreamer(
        source, CPU, options=StreamOptions(chunk_bytes=8 * KiB, threads=3)
    )
    with closing(streamer), pytest.raises(ModelLoadError, match="disk on fire"):
        streamer.start()
        for _ in streamer.stream():
            pass
    assert not _readers()


def test_a_tapered_tail_gives_the_same_bytes_in_more_reads(tmp_path: Path) -> None:
    """The load's last chunks are cut small (StreamOptions.tail_chunk_bytes): the same bytes,
    more reads at the end."""
    tensors = random_tensors(12)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    reads = []
    for tail in (0, 4 * KiB):
        source = CountingSource(LocalSource(tmp_path))
        options = StreamOptions(chunk_bytes=16 * KiB, threads=4, tail_chunk_bytes=tail)
        _assert_same(dict(SafetensorsStreamer(source, CPU, options=options).stream()), tensors)
        reads.append(source.data_reads)
    assert reads[1] > reads[0]


def test_the_tail_chunk_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    options = StreamOptions(chunk_bytes=32 * KiB * KiB)
    monkeypatch.delenv("EMBER_LOAD_TAPER", raising=False)
    assert options.tail_chunk(4 * KiB) == 32 * KiB * KiB  # no taper
    monkeypatch.setenv("EMBER_LOAD_TAPER", "1")
    assert options.tail_chunk(4 * KiB) == 4 * KiB * KiB
    assert (
        StreamOptions(chunk_bytes=8 * KiB).tail_chunk(4 * KiB) == 4 * KiB
    )  # at least the alignment
    assert StreamOptions(chunk_bytes=4 * KiB).tail_chunk(4 * KiB) == 4 * KiB
    assert (
        StreamOptions(chunk_bytes=64 * KiB, tail_chunk_bytes=9 * KiB).tail_chunk(4 * KiB) == 8 * KiB
    )
    assert StreamOptions(tail_chunk_bytes=0).tail_chunk(1) == 32 * KiB * KiB  # asked for none


class CountingSource(Source):
    """Counts large reads and optionally slows each one down."""

    def __init__(self, inner: LocalSource, delay_s: float = 0.0, fail_at: int = 0) -> None:
        self.inner = inner
        self.fail_at = fail_at  # this data read (1-based) raises
        self.uri = inner.uri
        self.alignment = inner.alignment
        self.delay_s = delay_s
        self.data_reads = 0
        self._lock = threading.Lock()

    def list_files(self) -> list[str] | None:
        return self.inner.list_files()

    def size(self, name: str) -> int:
        return self.inner.size(name)

    def read_into(self, name: str, offset: int, out: memoryview) -> int:
        if offset >= 4096:  # past the header
            with self._lock:
                self.data_reads += 1
                fail = self.data_reads == self.fail_at
            if fail:
                raise ModelLoadError("cannot read: disk on fire")
            time.sleep(self.delay_s)
        return self.inner.read_into(name, offset, out)


def _readers() -> list[str]:
    """Loader threads still at work: a load's own pools, and the kept readers' busy ones."""
    names = [t.name for t in threading.enumerate() if t.name.startswith("ember-load")]
    return names + ["ember-reader"] * workers.readers.busy()


def test_ring_hands_out_the_slot_given_back_longest_ago() -> None:
    """A reader gets the slot whose copies were enqueued earliest (the likeliest to be done),
    and a slot's memory stays the same across uses."""
    from ember.loader.ring import HostRing

    ring = HostRing(3, 8 * KiB, CPU)
    first = [ring.take() for _ in range(3)]
    assert sorted(first) == [0, 1, 2]
    for slot in first:
        ring.acquire(slot)
    memory = {slot: ring.tensor(slot).data_ptr() for slot in first}
    for slot in (2, 0, 1):
        assert ring.mark_copied(slot, None) is None  # off CUDA copies are done already
        ring.give(slot)
    assert [ring.take() for _ in range(3)] == [2, 0, 1]
    for slot in first:
        ring.acquire(slot)
        assert ring.tensor(slot).data_ptr() == memory[slot]  # allocated once, then reused
        assert ring.tensor(slot).numel() == 8 * KiB
