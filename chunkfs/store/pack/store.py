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
sealed also queues it for upload (store/tiering/uploads.py) and ``on_sealed`` wakes the
uploader.

Reads go to the pack's home tier (``PackInfo.tier``): a ``pread`` on hot, the
remote reader (store/tiering/fetch.py: disk cache, ranged GETs, read-ahead) on warm and
cold. A pack that is gone where the index said it was may have just moved
(store/tiering/tiers.py switches the index before it deletes the source): the read
looks the chunk up again and follows it; only a location that stays the same
and stays missing is damage.

Garbage collection (docs/gc.md, "The protocol"): before its first dedup
lookup (``dedup_lookup``) a process takes a *writer lease* (``gc_leases``); each file being
written holds a *write window* (``open_window``) that remembers the gc epoch
when it began, and every flush records the oldest open window's epoch as the
lease's floor. gc deletes the bytes of a condemned chunk only when it was
condemned before every live floor, so a chunk a writer found by dedup keeps its
bytes until the writer has committed (the commit resurrects it). Each flush also
resurrects the chunks located since the previous flush that gc condemned meanwhile.

Replicas (store/maintenance/replicas.py; set as ``replicas`` by the repository): when
``replication.replicas`` are configured, every chunk read from its home is
verified here (``Replicas.verifier``, the engine's codec) and returned decoded
(flags: no compression), so the caller's own check is one hash, not a second
decompression. A read that fails (pack missing, truncated, tier down) or
returns bytes that do not match the chunk's hash is then served from a replica
that has a good copy, with a warning naming the chunk and pack; only when no
replica has one does the original error reach the reader.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
import secrets
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable

from chunkfs import clock
from chunkfs.config import PackSettings
from chunkfs.errors import BackendUnavailable, Conflict, CorruptData, NoSpace, NotFound
from chunkfs.index import Index
from chunkfs.store.backends import ownership
from chunkfs.store.backends.local import LocalBackend
from chunkfs.store.pack import format as packfmt
from chunkfs.store.pack.files import PackWriter, claim, pack_name
from chunkfs.store.tiering.fetch import RemoteReader
from chunkfs.store.tiering.tiers import Tiers
from chunkfs.types import ChunkId, ChunkLocation, PackId, PackInfo, PackState, Tier, tier_name

log = logging.getLogger(__name__)

NO_WINDOW = (1 << 64) - 1
"""A writer lease's floor while its process has no write window open (gc: no constraint)."""


def lease_alive(pid: int, host: str) -> bool:
    """Whether the process that holds a writer lease may still be running: a lease of another
    host is assumed alive (its pid cannot be checked from here)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

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
        self.replicas = None  # store/maintenance/replicas.py Replicas, set by the repository when configured
        self._touched: dict[str, int] = {}  # group → when its open pack was last appended to (clock ns)
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._writers: OrderedDict[str, PackWriter] = OrderedDict()  # group → open pack
        self._pending: dict[ChunkId, ChunkLocation] = {}
        self._to_seal: list[PackWriter] = []
        self._lease: bytes | None = None  # gc writer lease (docs/gc.md), taken before the first lookup
        self._windows: dict[int, int] = {}  # open write window → gc epoch when it opened
        self._abandoned: collections.deque[int] = collections.deque()  # windows to drop (``abandon_window``)
        self._window_ids = itertools.count(1)
        self._located: set[ChunkId] = set()  # found in the index since the last flush
        self._seal_answered = 0  # the last gc seal request answered (``answer_seal_request``)

    # -- lookups --------------------------------------------------------------

    def locate(self, chunk: ChunkId) -> ChunkLocation | None:
        loc = self._pending.get(chunk)
        if loc is not None:
            return loc
        with self.index.read() as t:
            return t.chunk_get(chunk)

    def dedup_lookup(self, chunk: ChunkId) -> ChunkLocation | None:
        """``locate`` for a writer about to reference ``chunk`` instead of storing it: under
        the gc protocol (a lease first; a chunk found is resurrected at the next flush if gc
        condemned it meanwhile)."""
        loc = self._pending.get(chunk)
        if loc is not None:
            return loc
        if self._lease is None:
            self._take_lease()
        with self.index.read() as t:
            loc = t.chunk_get(chunk)
        if loc is not None:
            with self._lock:
                self._located.add(chunk)
        return loc

    # -- the gc protocol (docs/gc.md) ---------------------------------------------------

    def _floor(self) -> int:
        with self._lock:
            self._drop_abandoned()
            return min(self._windows.values(), default=NO_WINDOW)

    def _drop_abandoned(self) -> None:
        """Forget the windows ``abandon_window`` queued (the caller holds ``_lock``)."""
        while self._abandoned:
            self._windows.pop(self._abandoned.popleft(), None)

    def _write_lease(self, t) -> None:
        t.lease_put(self._lease, os.getpid(), self._floor(), clock.now_ns(), socket.gethostname())

    def _take_lease(self) -> None:
        with self.index.write() as t:
            if self._lease is not None:
                return
            self._lease = secrets.token_bytes(16)
            self._write_lease(t)

    def open_window(self) -> int:
        """Begin a write window (a file being written); ``close_window`` ends it.

        The first window of an idle process records its epoch in the lease at once
        (one write transaction); later ones are older-floored by it already."""
        with self._lock:
            self._drop_abandoned()
            token = next(self._window_ids)
            first = not self._windows
        if first and self._lease is not None:
            with self.index.write() as t:
                with self._lock:
                    self._windows[token] = t.gc_epoch()
                self._write_lease(t)
        else:
            with self.index.read() as t:
                epoch = t.gc_epoch()
            with self._lock:
                self._windows[token] = epoch
        return token

    def close_window(self, token: int, *, persist: bool = False) -> None:
        """End a write window; with ``persist`` (after the file's last commit), if it was the oldest
        one, the lease's floor moves up at once (otherwise the next flush moves it): gc may sweep
        what only that file held."""
        with self._lock:
            self._drop_abandoned()
            before = min(self._windows.values(), default=NO_WINDOW)
            self._windows.pop(token, None)
            moved = min(self._windows.values(), default=NO_WINDOW) != before
        if persist and moved and self._lease is not None:
            with self.index.write() as t:
                self._write_lease(t)

    def abandon_window(self, token: int) -> None:
        """End a window from a garbage-collection finalizer (its owner was collected). No lock may
        be taken there: the collector can run inside any ``with self._lock`` block of this very
        thread, and the lock is not reentrant. So the window is only queued (``deque.append`` is
        atomic); the next user of the window table drops it."""
        self._abandoned.append(token)

    def _release_lease(self) -> None:
        if self._lease is not None:
            with self.index.write() as t:
                t.lease_delete(self._lease)
            self._lease = None

    def _locate_home(self, chunk: ChunkId) -> tuple[ChunkLocation | None, PackInfo | None]:
        loc = self._pending.get(chunk)
        with self.index.read() as t:
            if loc is None:
                loc = t.chunk_get(chunk)
            return loc, (t.pack_get(loc.pack) if loc is not None else None)

    def read_stored(self, chunk: ChunkId) -> tuple[bytes, ChunkLocation]:
        """The stored bytes of ``chunk`` as they lie in their pack (or the read cache), unverified.

        The returned location's flags say how the bytes are encoded. With replicas configured the
        bytes are verified (and decoded) here, and damage is served from a replica.
        """
        replicas = self.replicas
        if replicas is None or not replicas.configured or replicas.verifier is None:
            return self._read_primary(chunk)
        try:
            stored, loc = self._read_primary(chunk)
        except (CorruptData, BackendUnavailable) as e:
            served = self._from_replica(chunk, str(e))
            if served is None:
                raise
            return served
        raw = replicas.verifier(chunk, stored, loc.raw_len, loc.flags)
        if raw is not None:
            return raw, dataclasses.replace(loc, stored_len=len(raw), flags=0)
        self.drop_cached(chunk)
        served = self._from_replica(chunk, "content does not match its hash")
        if served is None:
            return stored, loc  # the caller's check raises CorruptData naming the pack
        return served

    def _from_replica(self, chunk: ChunkId, why: str) -> tuple[bytes, ChunkLocation] | None:
        loc = self.locate(chunk)
        if loc is None:
            return None
        stored = self.replicas.fetch(chunk, loc)
        if stored is None:
            log.error("chunk %s in pack %s: %s, and no replica has a good copy", chunk.hex(), loc.pack.hex(), why)
            return None
        log.warning("chunk %s in pack %s: %s on its home tier; served from a replica (run `chunkfs fsck "
                    "--repair`)", chunk.hex(), loc.pack.hex(), why)  # fmt: skip
        raw = self.replicas.verifier(chunk, stored, loc.raw_len, loc.flags)
        return raw, dataclasses.replace(loc, stored_len=len(raw), flags=0)

    def _read_primary(self, chunk: ChunkId) -> tuple[bytes, ChunkLocation]:
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
        writer = self._new_writer(group)
        with self._lock:
            other = self._writers.get(group)
            if other is None:
                self._writers[group] = writer
                while len(self._writers) > self.settings.max_open:
                    self._to_seal.append(self._writers.popitem(last=False)[1])
        if other is not None:
            # Another thread opened this group's pack meanwhile: appending to ours would leave
            # chunks in a pack that is never synced, sized or sealed. Use theirs, drop ours.
            with self.index.write() as t:
                t.pack_delete(writer.pack)
            writer.close()
            self.hot.delete(pack_name(writer.pack))
            return other
        return writer

    def _new_writer(self, group: str) -> PackWriter:
        """A new open pack: its file created and locked first, then registered in the index
        (before it holds any chunk). So a registered open pack whose file nobody locks belongs
        to a dead process (``recover``); a pack file the index does not know yet is an orphan
        that gc deletes only once older than ``gc.orphan_age`` (docs/gc.md)."""
        while True:
            pack = ownership.new_pack_id(self.index.repo_id)
            try:
                writer = PackWriter(pack, self.hot.path(pack_name(pack)), group)
            except FileExistsError:
                continue
            with self.index.write() as t:
                taken = t.pack_get(pack) is not None
                if not taken:
                    t.pack_put(pack, PackInfo(Tier.HOT, PackState.OPEN, writer.size, 0, group, clock.now_ns()))
            if not taken:
                return writer
            writer.close()  # an id the index already has (a pack whose file is gone): another one
            os.unlink(writer.path)

    @staticmethod
    def _info(writer: PackWriter, state: PackState) -> PackInfo:
        return PackInfo(Tier.HOT, state, writer.size, len(writer.entries), writer.group, clock.now_ns())

    # -- durability ----------------------------------------------------------------

    def flush(self) -> None:
        """Make every appended chunk durable and indexed; seal full packs."""
        with self._flush_lock:
            with self._lock:
                pending = dict(self._pending)
                located, self._located = self._located, set()
                writers = list(self._writers.values())
                sealing, self._to_seal = self._to_seal, []
            for w in writers + sealing:
                w.sync()
            sealed = {w.pack: (w, w.seal()) for w in sealing}
            with self.index.write() as t:
                for chunk, loc in pending.items():
                    if t.chunk_get(chunk) is None:
                        t.chunk_put(chunk, loc)
                for w, _size in sealed.values():
                    # A chunk another thread appended just before the seal may not be pending yet
                    # (``append`` registers it after the write): index it here, or gc would take it
                    # for dead in a sealed pack and the late index entry would point at nothing.
                    for e in w.entries:
                        if e.chunk not in pending and t.chunk_get(e.chunk) is None:
                            t.chunk_put(e.chunk, e.location(w.pack))
                t.resurrect(located)  # gc protocol: located before gc condemned them
                if self._lease is not None:
                    self._write_lease(t)
                for w in writers:
                    t.pack_put(w.pack, self._info(w, PackState.OPEN))
                for w, _size in sealed.values():
                    t.pack_put(w.pack, self._info(w, PackState.SEALED))
                    if self.write_back:
                        t.upload_put(w.pack, clock.now_ns())
            for w, _size in sealed.values():
                w.close()  # its lock goes only now that the index says it is sealed
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

    def answer_seal_request(self) -> int:
        """Seal every open pack once per gc request (``meta/seal_request``): gc never touches an
        open pack, so the dead bytes in it come back only once it is sealed. Returns how many."""
        with self.index.read() as t:
            asked = t.seal_request()
        if asked <= self._seal_answered:
            return 0
        self._seal_answered = asked
        with self._lock:
            count = len(self._writers)
        if count:
            self.seal_all()
        return count

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

        Each is truncated to its indexed size first: records after it were never indexed,
        so nothing can reference them. A pack whose file another live process has locked
        is left alone (``PackWriter``); the lock is taken before the pack's state is read
        again, so a writer that sealed it meanwhile is never undone. Safe to call while
        this process and others write (the mount does, after one of its engine workers died).
        """
        with self.index.read() as t:
            stale = [p for p, i in t.packs() if i.state == PackState.OPEN]
        with self._lock:
            active = {w.pack for w in self._writers.values()}
        recovered = []
        for pack in stale:
            if pack not in active and self._recover_one(pack):
                recovered.append(pack)
        return recovered

    def _recover_one(self, pack: PackId) -> bool:
        path = self.hot.path(pack_name(pack))
        try:
            fd = claim(path)
        except Conflict:  # a live writer has it
            return False
        try:
            with self.index.read() as t:
                info = t.pack_get(pack)
            if info is None or info.state != PackState.OPEN:
                return False  # its writer sealed (or dropped) it since we looked
            if fd is None or info.size <= packfmt.HEADER.size:
                # it never held an indexed record; a power cut may have left it empty, headerless
                with self.index.write() as t:
                    t.pack_delete(pack)
                self.hot.delete(pack_name(pack))
                return False
            self.hot.forget(pack_name(pack))
            writer = PackWriter(pack, path, info.group, resume_size=info.size, fd=fd)
            fd = None  # the writer's now
        finally:
            if fd is not None:
                os.close(fd)
        try:
            writer.seal()
        except NoSpace as e:
            # Its indexed records stay readable without a footer; sealing
            # waits for the next open. A full disk must not lock users out.
            writer.close()
            log.warning("cannot seal pack %s yet: %s", pack.hex(), e)
            return False
        with self.index.write() as t:
            t.pack_put(pack, self._info(writer, PackState.SEALED))
            if self.write_back:
                t.upload_put(pack, clock.now_ns())
        writer.close()
        return True

    def close(self) -> None:
        self.seal_all()
        self._release_lease()
        self.hot.close()
