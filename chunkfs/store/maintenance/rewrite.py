"""The one way packs are rewritten: gc repacks, re-encoding repacks (warm, cold) and fsck repairs all go through here.

A rewrite copies live chunks (from old packs, or good copies found elsewhere) into
new packs on one tier and then retires the old packs. Its protocol, under the tier
lock (store/tiering/tiers.py) with the crash notes of ``moves`` (keys.py):

1. **NEW note**: before a new pack's object exists, ``moves`` notes (pack, tier, NEW).
2. **Build** the pack locally (``PackBuilder``: header, records, footer, BLAKE3),
   **seal** it, put it on the tier and verify it there (size and BLAKE3).
3. **Switch**, in one transaction: the new packs enter the index (their NEW notes
   go), every chunk whose location — in ``chunks`` *or* ``condemned`` — is still the
   old one it was copied from now points into a new pack, and each old pack that no
   live location names any more leaves the index, with an OLD note for its object
   on its home tier and on every copy. A chunk newly written as a delta switches only
   if it and its base are both in ``chunks`` (live: its ``deltas`` entry keeps the base
   live from then on); a condemned one stays whole where it was.
4. **Delete** the old objects, dropping each OLD note once its object is gone.

In a shared repository (``relocate``) other nodes read this node's packs on warm by the
locations its log entries gave them: step 3 also journals a ``relocate`` change (the moved
chunks, the base of each one now stored as a delta, the retired packs and their chunks;
published with the new locations, applied by every node: cluster/maintenance.py), and an
old pack's warm object is not noted OLD but *retiring* (keys.py, ``meta/retiring``): it is
deleted once every member has applied that change. Its other objects (the hot home: no
other node reads it) go at once.

Killed anywhere, whoever next takes the tier lock resolves the notes: a NEW object
the index does not place is deleted (undone), an OLD one is deleted (finished).

**The liveness rule** (``live_entries``), the same for every caller: a record of a
pack is live when ``chunks`` or ``condemned`` locates its chunk at exactly that
pack and offset. Condemned chunks count: gc took them out of dedup, but a writer
that found one before may still commit a reference to it and resurrect it
(docs/gc.md, "The protocol"), so its bytes must move with the pack — a rewrite that
dropped them would let that writer commit a reference into a deleted pack.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from chunkfs import clock
from chunkfs.errors import ChunkfsError
from chunkfs.index import Index
from chunkfs.store.backends import ownership
from chunkfs.store.backends.base import Backend
from chunkfs.store.backends.local import LocalBackend
from chunkfs.store.pack import format as packfmt
from chunkfs.store.pack.files import PackBuilder, pack_name, read_entries
from chunkfs.store.tiering.lock import NEW, OLD
from chunkfs.types import ChunkId, ChunkLocation, PackId, PackInfo, PackState, Tier

log = logging.getLogger(__name__)



def file_entries(path: Path) -> list[packfmt.Entry]:
    """Every chunk entry of the pack in the local file ``path`` (a tier's local copy), read through a
    backend of its own whose descriptor is closed after: an open one would keep the disk space
    of a pack that the rewrite then deletes until the process ends."""
    backend = LocalBackend(path.parent)
    try:
        return read_entries(backend, path.name)[0]
    finally:
        backend.close()


def live_entries(t, pack: PackId, entries: Iterable[packfmt.Entry]) -> list[packfmt.Entry]:
    """The records of ``pack`` whose chunk the index still locates there (``chunks`` or ``condemned``)."""
    return [e for e in entries if located_at(t, e.chunk, pack, e.offset)]


def located_at(t, chunk: ChunkId, pack: PackId, offset: int | None = None) -> bool:
    """Whether ``chunks`` or ``condemned`` places ``chunk`` in ``pack`` (at ``offset``, if given)."""
    for loc in (t.chunk_get(chunk), t.condemned_location(chunk)):
        if loc is not None and loc.pack == pack and (offset is None or loc.offset == offset):
            return True
    return False


def homes(t, pack: PackId, info: PackInfo) -> list[Tier]:
    """Every tier that holds an object of ``pack``: its home and its copies."""
    return [info.tier] + [tier for tier, _, _ in t.copies_of(pack)]


@dataclass
class RewriteResult:
    packs_written: int = 0
    bytes_written: int = 0
    chunks: int = 0
    deltas: int = 0  # chunks newly stored as deltas (switched in)
    new_packs: list[PackId] = field(default_factory=list)
    retired: list[PackId] = field(default_factory=list)  # old packs taken out of the index and deleted
    kept: list[PackId] = field(default_factory=list)  # old packs that still hold a live chunk, kept


class PackRewrite:
    """New packs on one tier, filled with ``add`` (one pack at a time per group); then ``switch``
    and ``delete`` (or ``finish``, both).

    The caller holds the tier lock from the first ``add`` to the end of ``delete``.
    """

    def __init__(
        self, index: Index, backend_of: Callable[[Tier], Backend], tier: Tier, group: str, tmpdir: Path,
        pack_size: int, *, write_back: bool = False, relocate: bool = False, as_stored: bool = False,
    ) -> None:  # fmt: skip
        """``backend_of``: the backend of a tier (``Tiers.backend``): new packs go to ``tier``'s,
        retired ones are deleted from wherever they are. ``group``: the pack group (run) of the
        chunks ``add`` gets without one. ``as_stored``: ``add`` gets the chunks' stored bytes as they
        were (a gc repack), so the new packs inherit the ``unencoded`` note of the old ones."""
        self.index = index
        self.backend_of = backend_of
        self.backend = backend_of(tier)
        self.tier = tier
        self.group = group
        self.tmpdir = tmpdir
        self.pack_size = pack_size
        self.write_back = write_back  # a new hot pack joins the write-back queue
        self.relocate = relocate  # a shared repository: other nodes learn the moves from the log
        self.as_stored = as_stored
        self._builders: dict[str, PackBuilder] = {}
        self._built: list[tuple[PackId, int, int, str]] = []  # (pack, size, chunks, group), on the tier, verified
        self._moved: dict[ChunkId, tuple[ChunkLocation | None, ChunkLocation]] = {}  # chunk → (old, new)
        self._bases: dict[ChunkId, ChunkId] = {}  # chunk written as a delta → its base
        self.result = RewriteResult()

    def add(self, chunk: ChunkId, old: ChunkLocation | None, stored: bytes, raw_len: int, flags: int,
            group: str | None = None) -> None:  # fmt: skip
        """Write one chunk's stored bytes into a new pack of ``group``; ``old``: where the index
        places it now (its location switches only if it is still that one at ``switch``; None: a
        chunk the index does not locate, put into ``chunks``)."""
        group = self.group if group is None else group
        b = self._builders.get(group)
        if b is None:
            with self.index.write() as t:
                while t.pack_get(new := ownership.new_pack_id(self.index.repo_id)) is not None:
                    pass
                t.move_put(new, self.tier, NEW, clock.now_ns())
            self.tmpdir.mkdir(parents=True, exist_ok=True)
            b = self._builders[group] = PackBuilder(new, self.tmpdir / f"{new.hex()}.pack")
        entry = b.add(chunk, stored, raw_len, flags)
        self._moved[chunk] = (old, entry.location(b.pack))
        base = packfmt.delta_base(stored, flags)
        if base is not None:
            self._bases[chunk] = base
        self.result.chunks += 1
        if b.size >= self.pack_size:
            self._seal(group)

    def _seal(self, group: str) -> None:
        b = self._builders.pop(group)
        size, digest = b.seal()
        name = pack_name(b.pack)
        try:
            if isinstance(self.backend, LocalBackend):
                self.backend.adopt(name, b.path)
            else:
                self.backend.put_file(name, b.path, blake3_digest=digest)
            self.backend.verify(name, digest, size)
        finally:
            b.path.unlink(missing_ok=True)
        self._built.append((b.pack, size, len(b.entries), group))
        self.result.packs_written += 1
        self.result.bytes_written += size

    def abort(self) -> None:
        """Throw away the packs being built (the NEW notes make the tier lock's resume delete the rest)."""
        for b in self._builders.values():
            b.discard()
        self._builders.clear()

    def seal(self) -> None:
        """Step 2 done: the last packs sealed, put on the tier and verified."""
        try:
            for group in list(self._builders):
                self._seal(group)
        except BaseException:
            self.abort()
            raise

    def switch(self, retire: dict[PackId, Iterable[ChunkId]]) -> list[tuple[PackId, Tier]]:
        """Step 3, one transaction: the new packs in, every location that did not change meanwhile
        switched, and each old pack of ``retire`` (pack → the chunks it may hold) that no live
        location names any more out, noted OLD. Returns the old objects to delete."""
        self.seal()
        now = clock.now_ns()
        old_objects: list[tuple[PackId, Tier]] = []
        with self.index.write() as t:
            unencoded = self.as_stored and any(t.is_unencoded(p) for p in retire)
            for pack, size, count, group in self._built:
                t.pack_put(pack, PackInfo(self.tier, PackState.SEALED, size, count, group, now))
                t.move_delete(pack, self.tier)
                if self.write_back and self.tier == Tier.HOT:
                    t.upload_put(pack, now)
                if unencoded:
                    t.unencoded_put(pack, now)
                self.result.new_packs.append(pack)
            switched = []
            for chunk, (old, new) in self._moved.items():
                base = self._bases.get(chunk)
                if base is not None and t.delta_base(chunk) != base:
                    # a new delta: only of a live chunk on a live base (gc's mark keeps the base from
                    # now on); else the chunk stays where it was, whole, and so does its old pack
                    if old is not None and t.chunk_get(chunk) == old and t.chunk_get(base) is not None:
                        t.delta_put(chunk, base)
                        t.chunk_put(chunk, new)
                        switched.append(chunk)
                        self.result.deltas += 1
                    continue
                current = t.chunk_get(chunk)
                if current == old or (old is None and current is None):
                    t.chunk_put(chunk, new)
                    switched.append(chunk)
                condemned = t.condemned_get(chunk)
                if condemned is not None and condemned[2] == old:
                    t.condemned_move(chunk, new)
                    switched.append(chunk)
            retired: dict[str, list[str]] = {}
            for pack, chunks in retire.items():
                info = t.pack_get(pack)
                if info is None:
                    continue
                chunks = list(chunks)
                if any(located_at(t, c, pack) for c in chunks):
                    self.result.kept.append(pack)
                    continue
                for tier in homes(t, pack, info):
                    t.copy_delete(pack, tier)
                    if self.relocate and tier == Tier.WARM:
                        t.retiring_put(pack, now)  # other nodes may read it until they relocate
                        continue
                    t.move_put(pack, tier, OLD, now)
                    old_objects.append((pack, tier))
                t.pack_delete(pack)
                t.upload_delete(pack)
                self.result.retired.append(pack)
                retired[bytes(pack).hex()] = [bytes(c).hex() for c in chunks]
            if self.relocate and switched:  # a kept pack's moved chunks too: the others follow at once
                moved = sorted({bytes(c).hex() for c in switched})
                bases = {c.hex(): bytes(b).hex() for c in map(bytes, switched) if (b := t.delta_base(c)) is not None}
                t.outbox_put(now, {"op": "relocate", "chunks": moved, "retire": retired, "bases": bases})
        self._built.clear()
        self._moved.clear()
        self._bases.clear()
        return old_objects

    def delete(self, objects: list[tuple[PackId, Tier]]) -> None:
        """Step 4: delete the old objects, dropping each OLD note once its object is gone (an object
        that cannot be deleted now keeps its note: the next holder of the tier lock retries)."""
        delete_old(self.index, self.backend_of, objects)

    def finish(self, retire: dict[PackId, Iterable[ChunkId]]) -> RewriteResult:
        """Steps 2 to 4 at once."""
        self.delete(self.switch(retire))
        return self.result


def delete_old(index: Index, backend_of: Callable[[Tier], Backend], objects: list[tuple[PackId, Tier]]) -> None:
    """Delete objects noted OLD, dropping each note once its object is gone (one that cannot be
    deleted now keeps its note: the next holder of the tier lock retries). Under the tier lock."""
    for pack, tier in objects:
        try:
            backend_of(tier).delete(pack_name(pack))
        except ChunkfsError as e:
            log.warning("cannot delete pack %s on the %s tier yet: %s", pack.hex(), tier.name.lower(), e)
            continue
        with index.write() as t:
            t.move_delete(pack, tier)
