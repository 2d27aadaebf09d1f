"""Putting and getting whole chunks: hash, dedup, encode, store; fetch, decode, verify, cache.

``ChunkIO`` is what the streaming file writer and reader use. It is
thread-safe: the FUSE layer calls it from worker threads, several files at once.

Chunks of warm and cold packs come through the pack store's remote reader
(disk read cache, ranged GETs, read-ahead along the pack); whatever their
source, ``get`` verifies them (``codec.decode``), and a chunk from the disk
cache that fails is dropped and fetched again from its tier.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable

from chunkfs.config import CompressionSettings
from chunkfs.engine import codec
from chunkfs.errors import ChunkfsError, CorruptData
from chunkfs.store.pack import format as packfmt
from chunkfs.store.pack.files import pack_name
from chunkfs.store.pack.store import PackStore
from chunkfs.types import HOLE, ChunkId, Compression, Extent, chunk_flags, flags_compression


def is_zero(data: bytes) -> bool:
    """True if every byte is zero (cheap for the common non-zero case)."""
    return not data or (data[0] == 0 and data[-1] == 0 and data == bytes(len(data)))


class ChunkCache:
    """A byte-bounded LRU of decoded chunks."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[ChunkId, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, chunk: ChunkId) -> bytes | None:
        with self._lock:
            data = self._items.get(chunk)
            if data is None:
                self.misses += 1
                return None
            self._items.move_to_end(chunk)
            self.hits += 1
            return data

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0

    def put(self, chunk: ChunkId, data: bytes) -> None:
        if len(data) > self.capacity:
            return
        with self._lock:
            if chunk in self._items:
                return
            self._items[chunk] = data
            self._size += len(data)
            while self._size > self.capacity:
                self._size -= len(self._items.popitem(last=False)[1])


class ChunkIO:
    """Chunks by content: the engine's view of the pack store."""

    def __init__(self, packs: PackStore, compression: CompressionSettings, cache_bytes: int) -> None:
        self.packs = packs
        self.compression = compression
        self.cache = ChunkCache(cache_bytes)
        self._stats_lock = threading.Lock()
        self.new_chunks = self.reused_chunks = 0
        self.new_bytes = self.reused_bytes = self.stored_bytes = 0
        self.read_bytes = 0

    def put(self, data: bytes, group: str) -> ChunkId:
        """Store ``data`` unless an identical chunk exists; return its id."""
        if is_zero(data):
            return HOLE
        chunk = codec.chunk_id(data)
        if self.packs.dedup_lookup(chunk) is not None:
            with self._stats_lock:
                self.reused_chunks += 1
                self.reused_bytes += len(data)
            return chunk
        stored, flags = codec.encode(data, self.compression)
        self.packs.append(chunk, stored, len(data), flags, group)
        with self._stats_lock:
            self.new_chunks += 1
            self.new_bytes += len(data)
            self.stored_bytes += len(stored)
        return chunk

    def reuse(self, extents: list[Extent]) -> bool:
        """Reference stored chunks known by their ids alone (no bytes to hash): True if every one is
        still in the store — found inside a gc write window they then stay, like dedup hits of
        ``put``; False (none counted) if one is gone."""
        if not all(e.chunk == HOLE or self.packs.dedup_lookup(e.chunk) is not None for e in extents):
            return False
        with self._stats_lock:
            self.reused_chunks += len(extents)
            self.reused_bytes += sum(e.length for e in extents)
        return True

    def open_window(self, owner: object) -> int:
        """A gc write window for ``owner`` (an open file's content; docs/gc.md): ended by
        ``end_window`` after its last commit, or at the latest when ``owner`` is garbage collected."""
        token = self.packs.open_window()
        weakref.finalize(owner, self.packs.abandon_window, token)
        return token

    def end_window(self, owner: object) -> None:
        """``owner``'s content is committed for good: its dedup lookups need no protection any more."""
        token = getattr(owner, "gc_window", None)
        if token is not None:
            owner.gc_window = None
            self.packs.close_window(token, persist=True)

    def note_read(self, nbytes: int) -> None:
        """Count ``nbytes`` of file content returned to a reader (``read_bytes``: what users read,
        not what the chunk fetches behind it cost — those are ``get`` calls, some read ahead)."""
        with self._stats_lock:
            self.read_bytes += nbytes

    def get(self, chunk: ChunkId, length: int, _depth: int = 0) -> bytes:
        """The verified bytes of ``chunk`` (``length`` zeros for a hole). A chunk read ahead from a
        remote tier may come as a read-only memoryview: use it as bytes-like. A delta chunk's
        base is got the same way, first (through the cache, like any chunk)."""
        if chunk == HOLE:
            return bytes(length)
        data = self.cache.get(chunk)
        if data is None:
            if _depth > codec.MAX_DELTA_DEPTH:
                raise CorruptData(f"chunk {chunk.hex()}: a chain of more than {codec.MAX_DELTA_DEPTH} deltas")

            def base(b: ChunkId) -> bytes:
                return self.get(b, 0, _depth + 1)

            stored, loc = self.packs.read_stored(chunk)
            try:
                data = codec.decode(chunk, stored, loc.raw_len, loc.flags, f"pack {pack_name(loc.pack)}", base)
            except CorruptData:
                if not self.packs.drop_cached(chunk):  # not from the read cache: the pack is damaged
                    raise
                stored, loc = self.packs.read_stored(chunk)
                data = codec.decode(chunk, stored, loc.raw_len, loc.flags, f"pack {pack_name(loc.pack)}", base)
            self.cache.put(chunk, data)
        return data

    def verify(self, chunk: ChunkId, stored: bytes, raw_len: int, flags: int, where: str) -> bytes:
        """``codec.decode`` of stored bytes read by another way than ``get`` (fsck, drills,
        replicas), a delta's base got through ``get``."""
        return codec.decode(chunk, stored, raw_len, flags, where, lambda b: self.get(b, 0))

    def prefetch(self, chunks: Iterable[ChunkId], progress: Callable[[int], None] = lambda n: None) -> tuple[int, int]:
        """Stage chunks of warm/cold packs in the disk read cache; (bytes fetched, bytes on the hot tier)."""
        return self.packs.stage(dict.fromkeys(c for c in chunks if c != HOLE), progress)

    def recompress(
        self, chunk: ChunkId, stored: bytes, raw_len: int, flags: int, level: int, base: ChunkId | None = None,
    ) -> tuple[bytes, int]:  # fmt: skip
        """Re-encode a chunk for warm or cold (maintenance/reencode.py): whichever of zstd at
        ``level``, byte planes of width 2 or 4 + zstd, a delta against ``base`` (if given) or raw
        bytes is smallest, tried on a sample first (``codec.repack_encoding``); the stored bytes
        stay when nothing is smaller, and a delta stays a delta. Never repacks damage: the chunk
        is verified on the way in, and a new encoding is decoded and verified before it
        replaces the only copy (a few percent of the level-9 compression)."""
        if packfmt.delta_base(stored, flags) is not None:
            return stored, flags
        raw = codec.decode(chunk, stored, raw_len, flags, "repack")
        sample = self.compression.sample
        how = codec.repack_encoding(raw[:sample], level)
        best = (stored, flags)
        if how != Compression.NONE:
            packed = codec.compress(raw, how, level)
            if len(packed) < len(stored):
                best = (packed, chunk_flags(how))
        if best[0] is stored and flags_compression(flags) != Compression.NONE and len(raw) <= len(stored):
            best = (raw, chunk_flags(Compression.NONE))
        base_raw = self._base(base, raw_len)
        if base_raw is not None:
            delta = codec.encode_delta(raw, base, base_raw, sample)
            if delta is not None and len(delta[0]) < len(best[0]) * codec.REPACK_MAX_RATIO:
                best = delta
        if best[0] is not stored and best[0] is not raw:
            self.verify(chunk, best[0], raw_len, best[1], "repack output")
        return best

    def _base(self, base: ChunkId | None, raw_len: int) -> bytes | None:
        """The bytes of a planned delta's base, None when there is none to use: another length,
        or gone meanwhile (gc; the pack rewrite's switch then keeps the chunk whole anyway)."""
        if base is None:
            return None
        try:
            data = self.get(base, 0)
        except ChunkfsError:
            return None
        return data if len(data) == raw_len else None

    def flush(self) -> None:
        """Make every chunk put so far durable and findable by other processes."""
        self.packs.flush()
