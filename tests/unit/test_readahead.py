"""engine/readahead.py against a stand-in for ChunkIO that counts fetches: what is fetched ahead,
what is not, one fetch per chunk however many readers want it, errors left to readers."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent.futures import wait
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from chunkfs.engine.readahead import SEQUENTIAL_SLACK, ReadAhead, ReadStream
from chunkfs.errors import CorruptData
from chunkfs.types import HOLE, Tier

MiB = 1 << 20
CHUNK = 4 * MiB


class FakeChunks:
    """``ChunkIO.get`` with a cache, over packs on the given tiers; counts the fetches that missed.

    ``gate``: fetches wait for it (a fetch held in flight); ``damaged``: chunks whose fetch fails."""

    def __init__(self, tiers: dict[bytes, Tier], damaged=(), gate: threading.Event | None = None) -> None:
        self.tiers, self.damaged, self.gate = tiers, set(damaged), gate
        self.cached: dict[bytes, bytes] = {}
        self.fetches: Counter = Counter()
        self._lock = threading.Lock()
        self.packs = SimpleNamespace(
            locate=lambda c: SimpleNamespace(pack=c) if c in tiers else None,
            index=SimpleNamespace(read=self._txn),
        )

    @contextmanager
    def _txn(self):
        yield SimpleNamespace(pack_get=lambda pack: SimpleNamespace(tier=self.tiers[pack]))

    def get(self, chunk: bytes, length: int) -> bytes:
        with self._lock:
            if chunk in self.cached:
                return self.cached[chunk]
            self.fetches[chunk] += 1
        if self.gate is not None:
            self.gate.wait(10)
        if chunk in self.damaged:
            raise CorruptData(f"chunk {chunk.hex()} in pack p: content does not match its hash")
        data = chunk[:1] * length
        with self._lock:
            self.cached[chunk] = data
        return data


def cid(i: int) -> bytes:
    return bytes([i]) * 32


def upcoming(*indexes: int) -> list[tuple[int, bytes, int]]:
    return [(i * CHUNK, cid(i), CHUNK) for i in indexes]


def settle(stream: ReadStream) -> None:
    wait(stream.pending, timeout=10)


def test_a_read_continues_the_stream_within_the_slack_and_a_jump_starts_a_new_one():
    s = ReadStream()
    assert s.sequential(0, MiB)  # the first read at 0
    assert s.sequential(2 * MiB, 3 * MiB)  # the kernel's window, out of order
    assert s.sequential(MiB, 2 * MiB)
    assert not s.sequential(3 * MiB + SEQUENTIAL_SLACK + 1, 3 * MiB + SEQUENTIAL_SLACK + 2)
    assert s.sequential(
        3 * MiB + SEQUENTIAL_SLACK + 2, 3 * MiB + SEQUENTIAL_SLACK + 10
    )  # from the new place on
    assert not s.sequential(0, MiB)


def test_the_next_hot_chunks_are_fetched_once_and_warm_cold_and_holes_not_at_all():
    chunks = FakeChunks({cid(1): Tier.HOT, cid(2): Tier.HOT, cid(3): Tier.WARM, cid(4): Tier.COLD})
    ra, s = ReadAhead(chunks), ReadStream()
    try:
        ra.follow(s, upcoming(1, 2))
        settle(s)
        assert chunks.fetches == Counter({cid(1): 1, cid(2): 1})
        ra.follow(s, upcoming(2, 3) + [(4 * CHUNK, HOLE, CHUNK)])  # the reader moved one chunk on
        ra.follow(s, upcoming(2, 3))  # a second request in the same chunk asks for nothing new
        settle(s)
        ra.follow(s, upcoming(4))
        settle(s)
        assert chunks.fetches == Counter({cid(1): 1, cid(2): 1})
        assert ra.get(cid(2), CHUNK) == b"\x02" * CHUNK
        assert chunks.fetches[cid(2)] == 1, "the reader found it in the cache"
    finally:
        ra.close()


def test_reads_that_miss_one_chunk_at_once_wait_for_one_fetch():
    gate = threading.Event()
    chunks = FakeChunks({cid(1): Tier.HOT}, gate=gate)
    ra = ReadAhead(chunks)
    results: list[bytes] = []
    readers = [threading.Thread(target=lambda: results.append(ra.get(cid(1), CHUNK))) for _ in range(4)]
    try:
        for t in readers:
            t.start()
        deadline = time.monotonic() + 10
        while not chunks.fetches[cid(1)] and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # the others are waiting now (or would have started their own fetch)
        gate.set()
        for t in readers:
            t.join(10)
        assert results == [b"\x01" * CHUNK] * 4
        assert chunks.fetches[cid(1)] == 1
    finally:
        gate.set()
        ra.close()


def test_a_failed_fetch_ahead_is_a_warning_and_the_reader_that_reaches_the_chunk_gets_the_error(caplog):
    chunks = FakeChunks({cid(1): Tier.HOT, cid(2): Tier.HOT}, damaged={cid(2)})
    ra, s = ReadAhead(chunks), ReadStream()
    try:
        with caplog.at_level(logging.WARNING, logger="chunkfs.engine.readahead"):
            ra.follow(s, upcoming(1, 2))
            settle(s)
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
        assert cid(2).hex() in caplog.records[0].getMessage()
        assert ra.get(cid(1), CHUNK) == b"\x01" * CHUNK  # the good one is there
        with pytest.raises(CorruptData, match=cid(2).hex()):
            ra.get(cid(2), CHUNK)
        assert chunks.fetches[cid(2)] == 2, "the reader fetched it again itself"
    finally:
        ra.close()


def test_random_access_cancels_what_the_stream_queued():
    gate = threading.Event()
    chunks = FakeChunks({cid(i): Tier.HOT for i in range(1, 4)}, gate=gate)
    ra, s = ReadAhead(chunks, depth=3, workers=1), ReadStream()
    try:
        ra.follow(s, upcoming(1, 2, 3))  # 1 runs (held at the gate), 2 and 3 wait for the worker
        deadline = time.monotonic() + 10
        while not chunks.fetches[cid(1)] and time.monotonic() < deadline:
            time.sleep(0.01)
        queued = s.pending[1:]
        ra.cancel(s)
        gate.set()
        assert all(f.cancelled() for f in queued)
        time.sleep(0.1)
        assert chunks.fetches == Counter({cid(1): 1})
        assert s.ahead_to == 0 and not s.pending, "a stream that starts again asks again"
    finally:
        gate.set()
        ra.close()
