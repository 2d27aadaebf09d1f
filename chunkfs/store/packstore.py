"""The pack store: stored chunk bytes in packs on the hot tier, located through the index.

It knows nothing of hashing or compression (the engine's job): it appends a
chunk's stored bytes to the open pack of the chunk's *pack group* (one per run
directory, so a run's data travels together when tiered), finds them again, and
makes them durable.

Durability protocol (docs/format.md has the crash analysis):

1. ``append`` writes the record to the open pack and remembers its location in
   memory (``_pending``); dedup lookups see it at once.
2. ``flush`` fsyncs every pack with new records, *then* commits their index
   entries and the packs' sizes in one LMDB transaction.
3. A pack that reached its target size is sealed: footer written, fsync'd, and
   marked sealed in the index.

A crash loses only records after the last flush; they are not in the index, so
nothing references them. At the next open for writing, ``recover`` truncates
each pack still marked open to its indexed size and seals it.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import OrderedDict

from chunkfs import clock
from chunkfs.config import PackSettings
from chunkfs.errors import CorruptData, NoSpace, NotFound
from chunkfs.index import Index
from chunkfs.store import packfmt
from chunkfs.store.backend import LocalBackend
from chunkfs.store.packs import PackWriter, pack_name
from chunkfs.types import ChunkId, ChunkLocation, PackId, PackInfo, PackState, Tier

log = logging.getLogger(__name__)

FLUSH_PENDING = 4096
"""Flush on its own once this many chunks are unindexed, to keep memory bounded."""


class PackStore:
    """Append and read chunk records; the only writer of the chunks and packs databases."""

    def __init__(self, index: Index, hot: LocalBackend, settings: PackSettings) -> None:
        self.index = index
        self.hot = hot
        self.settings = settings
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._writers: OrderedDict[str, PackWriter] = OrderedDict()  # group → open pack
        self._pending: dict[ChunkId, ChunkLocation] = {}
        self._to_seal: list[PackWriter] = []

    # -- lookups --------------------------------------------------------------

    def locate(self, chunk: ChunkId) -> ChunkLocation | None:
        loc = self._pending.get(chunk)
        if loc is not None:
            return loc
        with self.index.read() as t:
            return t.chunk_get(chunk)

    def read_stored(self, chunk: ChunkId) -> tuple[bytes, ChunkLocation]:
        """The stored bytes of ``chunk`` as they lie in their pack, unverified."""
        loc = self.locate(chunk)
        if loc is None:  # a manifest names it, so this is damage (EIO), not a missing file (ENOENT)
            raise CorruptData(
                f"chunk {chunk.hex()}: not in the index; run `chunkfs index rebuild` or `chunkfs fsck`"
            )
        try:
            data = self.hot.get_range(pack_name(loc.pack), loc.offset, loc.stored_len)
        except NotFound:
            raise CorruptData(
                f"chunk {chunk.hex()} in pack {loc.pack.hex()}: the pack file is missing from "
                f"{self.hot.url}; run `chunkfs fsck`"
            ) from None
        if len(data) != loc.stored_len:
            raise CorruptData(
                f"chunk {chunk.hex()} in pack {loc.pack.hex()}: pack is truncated "
                f"(read {len(data)} of {loc.stored_len} bytes); run `chunkfs fsck`"
            )
        return data, loc

    # -- appending --------------------------------------------------------------

    def append(self, chunk: ChunkId, stored: bytes, raw_len: int, flags: int, group: str) -> ChunkLocation:
        """Store a chunk's bytes in the open pack of ``group`` (unless already there)."""
        while True:
            writer = self._writer(group)
            entry = writer.append(chunk, stored, raw_len, flags)
            if entry is not None:
                break
            # another thread sealed this pack between the lookup and the append: take the next one
        loc = ChunkLocation(writer.pack, entry.offset, entry.stored_len, raw_len, flags)
        with self._lock:
            self._pending.setdefault(chunk, loc)
            if writer.size >= self.settings.target_size and writer in self._writers.values():
                del self._writers[writer.group]
                self._to_seal.append(writer)
            must_flush = self._to_seal or len(self._pending) >= FLUSH_PENDING
        if must_flush:
            self.flush()
        return loc

    def _writer(self, group: str) -> PackWriter:
        with self._lock:
            writer = self._writers.get(group)
            if writer is not None:
                self._writers.move_to_end(group)
                return writer
        pack = secrets.token_bytes(16)
        writer = PackWriter(pack, self.hot.path(pack_name(pack)), group)
        with self.index.write() as t:  # known to the index before it holds any chunk
            t.pack_put(pack, self._info(writer, PackState.OPEN))
        with self._lock:
            self._writers[group] = writer
            while len(self._writers) > self.settings.max_open:
                self._to_seal.append(self._writers.popitem(last=False)[1])
        return writer

    @staticmethod
    def _info(writer: PackWriter, state: PackState) -> PackInfo:
        return PackInfo(Tier.HOT, state, writer.size, len(writer.entries), writer.group, clock.now_ns())

    # -- durability ----------------------------------------------------------------

    def flush(self) -> None:
        """Make every appended chunk durable and indexed; seal full packs."""
        with self._flush_lock:
            with self._lock:
                pending = dict(self._pending)
                writers = list(self._writers.values())
                sealing, self._to_seal = self._to_seal, []
            for w in writers + sealing:
                w.sync()
            sealed = {w.pack: (w, w.seal()) for w in sealing}
            with self.index.write() as t:
                for chunk, loc in pending.items():
                    if t.chunk_get(chunk) is None:
                        t.chunk_put(chunk, loc)
                for w in writers:
                    t.pack_put(w.pack, self._info(w, PackState.OPEN))
                for w, _size in sealed.values():
                    t.pack_put(w.pack, self._info(w, PackState.SEALED))
            with self._lock:
                for chunk, loc in pending.items():
                    if self._pending.get(chunk) == loc:
                        del self._pending[chunk]

    def seal_all(self) -> None:
        """Seal every open pack (unmount, end of an import)."""
        with self._lock:
            self._to_seal.extend(self._writers.values())
            self._writers.clear()
        self.flush()

    def recover(self) -> list[PackId]:
        """Seal packs left open by a process that died; return their ids.

        Each is truncated to its indexed size first: records after it were
        never indexed, so nothing can reference them.
        """
        with self.index.read() as t:
            stale = [(p, i) for p, i in t.packs() if i.state == PackState.OPEN]
        with self._lock:
            active = {w.pack for w in self._writers.values()}
        recovered = []
        for pack, info in stale:
            if pack in active:
                continue
            path = self.hot.path(pack_name(pack))
            if not path.exists() or info.size <= packfmt.HEADER.size:
                # it never held an indexed record; a power cut may have left it empty, headerless
                self.hot.delete(pack_name(pack))
                with self.index.write() as t:
                    t.pack_delete(pack)
                continue
            self.hot.forget(pack_name(pack))
            writer = PackWriter(pack, path, info.group, resume_size=info.size)
            try:
                writer.seal()
            except NoSpace as e:
                # Its indexed records stay readable without a footer; sealing
                # waits for the next open. A full disk must not lock users out.
                writer.close()
                log.warning("cannot seal pack %s yet: %s", pack.hex(), e)
                continue
            with self.index.write() as t:
                t.pack_put(pack, self._info(writer, PackState.SEALED))
            recovered.append(pack)
        return recovered

    def close(self) -> None:
        self.seal_all()
        self.hot.close()
