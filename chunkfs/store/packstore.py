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

With a warm tier configured (``write_back``), the transaction that marks a pack
sealed also queues it for upload (store/uploads.py) and ``on_sealed`` wakes the
uploader.

Reads go to the pack's home tier (``PackInfo.tier``): a ``pread`` on hot, the
remote reader (store/fetch.py: disk cache, ranged GETs, read-ahead) on warm and
cold. A pack that is gone where the index said it was may have just moved
(store/tiers.py switches the index before it deletes the source): the read
looks the chunk up again and follows it; only a location that stays the same
and stays missing is damage.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable

from chunkfs import clock
from chunkfs.config import PackSettings
from chunkfs.errors import CorruptData, NoSpace, NotFound
from chunkfs.index import Index
from chunkfs.store import packfmt
from chunkfs.store.backend import LocalBackend
from chunkfs.store.fetch import RemoteReader
from chunkfs.store.packs import PackWriter, pack_name
from chunkfs.store.tiers import Tiers, tier_name
from chunkfs.types import ChunkId, ChunkLocation, PackId, PackInfo, PackState, Tier

log = logging.getLogger(__name__)

FLUSH_PENDING = 4096
"""Flush on its own once this many chunks are unindexed, to keep memory bounded."""


class PackStore:
    """Append and read chunk records; the only writer of the chunks and packs databases."""

    def __init__(
        self,
        index: Index,
        hot: LocalBackend,
        settings: PackSettings,
        *,
        tiers: Tiers | None = None,
        remote: RemoteReader | None = None,
        write_back: bool = False,
    ) -> None:
        self.index = index
        self.hot = hot
        self.settings = settings
        self.tiers = tiers
        self.remote = remote
        self.write_back = write_back
        self.on_sealed: Callable[[], None] = lambda: None
        self._touched: dict[str, int] = {}  # group → when its open pack was last appended to (clock ns)
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

    def _locate_home(self, chunk: ChunkId) -> tuple[ChunkLocation | None, PackInfo | None]:
        loc = self._pending.get(chunk)
        with self.index.read() as t:
            if loc is None:
                loc = t.chunk_get(chunk)
            return loc, (t.pack_get(loc.pack) if loc is not None else None)

    def read_stored(self, chunk: ChunkId) -> tuple[bytes, ChunkLocation]:
        """The stored bytes of ``chunk`` as they lie in their pack (or the read cache), unverified.

        The returned location's flags say how the bytes are encoded.
        """
        loc, info = self._locate_home(chunk)
        for _attempt in range(3):
            if loc is None:  # a manifest names it, so this is damage (EIO), not a missing file (ENOENT)
                raise CorruptData(
                    f"chunk {chunk.hex()}: not in the index; run `chunkfs index rebuild` or `chunkfs fsck`"
                )
            tier = info.tier if info is not None else Tier.HOT
            try:
                return self._read_from(chunk, loc, info, tier)
            except NotFound:
                again, again_info = self._locate_home(chunk)
                if again == loc and (again_info.tier if again_info is not None else Tier.HOT) == tier:
                    break
                log.info("chunk %s: pack moved while reading; following it", chunk.hex())
                loc, info = again, again_info
        where = self.hot.url if tier == Tier.HOT else self.tiers.url(tier)
        raise CorruptData(
            f"chunk {chunk.hex()} in pack {loc.pack.hex()}: the pack file is missing from "
            f"{where}; run `chunkfs fsck`"
        )

    def _read_from(self, chunk: ChunkId, loc: ChunkLocation, info: PackInfo | None, tier: Tier) -> tuple[bytes, ChunkLocation]:
        if tier == Tier.HOT:
            data = self.hot.get_range(pack_name(loc.pack), loc.offset, loc.stored_len)
            if len(data) != loc.stored_len:
                raise CorruptData(
                    f"chunk {chunk.hex()} in pack {loc.pack.hex()}: pack is truncated "
                    f"(read {len(data)} of {loc.stored_len} bytes); run `chunkfs fsck`"
                )
            return data, loc
        if self.remote is None or self.tiers is None or not self.tiers.configured(tier):
            raise CorruptData(
                f"chunk {chunk.hex()} in pack {loc.pack.hex()}: on the {tier_name(tier)} tier, which "
                f"chunkfs.toml does not configure (tiers.{tier_name(tier)})"
            )
        flags, data = self.remote.read(chunk, loc, info)
        return data, (loc if flags == loc.flags else dataclasses.replace(loc, flags=flags))

    def drop_cached(self, chunk: ChunkId) -> bool:
        """Forget a locally cached copy of a remote chunk (it failed verification); True if there was one."""
        return self.remote.discard(chunk) if self.remote is not None else False

    def stage(self, chunks: Iterable[ChunkId], progress: Callable[[int], None] = lambda n: None) -> tuple[int, int]:
        """Fetch the remote ones of ``chunks`` into the read cache; return (bytes fetched, bytes on
        the hot tier)."""
        wanted: dict[PackId, tuple[PackInfo, list]] = {}
        local = 0
        with self.index.read() as t:
            for chunk in chunks:
                loc = self._pending.get(chunk) or t.chunk_get(chunk)
                if loc is None:
                    raise CorruptData(f"chunk {chunk.hex()}: not in the index; run `chunkfs fsck`")
                info = t.pack_get(loc.pack)
                if info is None or info.tier == Tier.HOT:
                    local += loc.stored_len
                    progress(loc.stored_len)
                    continue
                wanted.setdefault(loc.pack, (info, []))[1].append((chunk, loc))
        if not wanted:
            return 0, local
        if self.remote is None:
            raise CorruptData("chunks on a remote tier, but chunkfs.toml configures none")
        return self.remote.stage(wanted, progress), local

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
            self._touched[group] = clock.now_ns()
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
                    if self.write_back:
                        t.upload_put(w.pack, clock.now_ns())
            with self._lock:
                for chunk, loc in pending.items():
                    if self._pending.get(chunk) == loc:
                        del self._pending[chunk]
            if sealed and self.write_back:
                self.on_sealed()

    def seal_all(self) -> None:
        """Seal every open pack (unmount, end of an import)."""
        with self._lock:
            self._to_seal.extend(self._writers.values())
            self._writers.clear()
            self._touched.clear()
        self.flush()

    def open_groups(self) -> list[str]:
        """Groups with an open pack in this process."""
        with self._lock:
            return list(self._writers)

    def seal_groups(self, groups: set[str], idle_before_ns: int) -> int:
        """Seal the open packs of ``groups`` not appended to since ``idle_before_ns`` (complete runs:
        their last pack can then move); return how many."""
        with self._lock:
            chosen = [g for g in self._writers if g in groups and self._touched.get(g, 0) < idle_before_ns]
            for g in chosen:
                self._to_seal.append(self._writers.pop(g))
                self._touched.pop(g, None)
        if chosen:
            self.flush()
        return len(chosen)

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
                if self.write_back:
                    t.upload_put(pack, clock.now_ns())
            recovered.append(pack)
        return recovered

    def close(self) -> None:
        self.seal_all()
        self.hot.close()
