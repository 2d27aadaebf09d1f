"""Deleting and repacking packs for gc (docs/gc.md, "Sweeping packs").

Every function here runs under the tier lock (store/tiering/tiers.py) and follows its
crash protocol: a new object is noted (``moves`` kind *new*) before it is
written, and an old one (kind *old*) in the same transaction that takes it out
of the index; whoever next takes the lock finishes or undoes what a killed
process left (``Tiers._resume_locked``). A repack is the one pack rewrite of
store/maintenance/rewrite.py, with its one liveness rule: *live* chunks of a pack are those
that ``chunks`` or ``condemned`` locate in it (condemned chunks keep their bytes
until gc sweeps them); everything else in a pack — chunks gc swept, records of
crashed writes that were never indexed — is dead weight that a delete or a
repack reclaims.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from chunkfs import clock
from chunkfs.errors import Conflict, NotFound
from chunkfs.index import Index
from chunkfs.store.backends import ownership
from chunkfs.store.backends.local import LocalBackend
from chunkfs.store.maintenance.replicas import Replicas
from chunkfs.store.maintenance.rewrite import OLD, PackRewrite, file_entries, homes, live_entries
from chunkfs.store.pack import format as packfmt
from chunkfs.store.pack.files import claim, pack_id_from_name, pack_name
from chunkfs.store.tiering.tiers import Tiers
from chunkfs.types import ChunkId, PackId, PackInfo, PackState, Tier, tier_name

log = logging.getLogger(__name__)

Hook = Callable[[str], None]


@dataclass
class PackUsage:
    pack: PackId
    info: PackInfo
    live_bytes: int = 0  # stored bytes of the live chunks, record headers and footer entries included
    live_chunks: int = 0
    condemned: int = 0  # condemned chunks still located here (their bytes must stay)

    @property
    def dead_bytes(self) -> int:
        """What a rewrite of the pack would give back (never negative: an open pack has no footer yet)."""
        overhead = packfmt.HEADER.size + packfmt.TRAILER.size
        return max(0, self.info.size - self.live_bytes - overhead)

    @property
    def fraction(self) -> float:
        """The live part of the pack (1.0: nothing to reclaim)."""
        return 1.0 - self.dead_bytes / self.info.size if self.info.size else 0.0


@dataclass
class SweepResult:
    packs_deleted: int = 0
    bytes_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    bytes_repacked_in: int = 0
    bytes_repacked_out: int = 0
    orphans_deleted: int = 0
    orphan_bytes: int = 0
    foreign: int = 0  # pack objects nothing here explains whose names do not say they are ours: left
    by_tier: dict = field(default_factory=dict)


def usage(index: Index) -> dict[PackId, PackUsage]:
    """How much of every pack is live, from one snapshot of the index."""
    per_chunk = packfmt.RECORD.size + packfmt.ENTRY.size
    with index.read() as t:
        out = {p: PackUsage(p, i) for p, i in t.packs()}
        for _chunk, loc in t.chunks():
            u = out.get(loc.pack)
            if u is not None:
                u.live_bytes += loc.stored_len + per_chunk
                u.live_chunks += 1
        for _chunk, _epoch, _ns, loc in t.condemned():
            u = out.get(loc.pack)
            if u is not None:
                u.live_bytes += loc.stored_len + per_chunk
                u.condemned += 1
    return out


def delete_packs(tiers: Tiers, index: Index, packs: list[PackId], hook: Hook, result: SweepResult,
                 *, spare: Tier | None = None, retire_warm: bool = False) -> None:
    """Delete packs that hold no live chunk, on their home tier and every copy — but the object
    on ``spare`` (another node's pack in a shared repository: its warm object is its owner's),
    and with ``retire_warm`` (this node's own pack there) the warm object, noted *retiring*
    instead: another node may not have followed a chunk moved out of it yet (rewrite.py)."""
    with tiers.lock.hold():
        notes: list[tuple[PackId, Tier]] = []
        with index.write() as t:
            now = clock.now_ns()
            for pack in packs:
                info = t.pack_get(pack)
                if info is None or info.state != PackState.SEALED:
                    continue
                for tier in homes(t, pack, info):
                    t.copy_delete(pack, tier)
                    if retire_warm and tier == Tier.WARM:
                        t.retiring_put(pack, now)
                    elif tier != spare:
                        t.move_put(pack, tier, OLD, now)
                        notes.append((pack, tier))
                t.pack_delete(pack)
                t.upload_delete(pack)
                result.packs_deleted += 1
                result.bytes_deleted += info.size
                key = tier_name(info.tier)
                result.by_tier[key] = result.by_tier.get(key, 0) + info.size
        hook("packs-unindexed")
        for pack, tier in notes:
            tiers.backend(tier).delete(pack_name(pack))
            with index.write() as t:
                t.move_delete(pack, tier)


def repack(tiers: Tiers, index: Index, tier: Tier, group: str, packs: list[PackId], *, write_back: bool,
           progress: Callable[[int], None], hook: Hook, result: SweepResult, relocate: bool = False) -> None:
    """Rewrite the live chunks of ``packs`` (one group's, on ``tier``) into new packs on the same tier
    (store/maintenance/rewrite.py: switch every location and drop the old packs in one transaction, then
    delete them; ``relocate``: a shared repository's, whose other nodes follow the chunks through the log)."""
    with tiers.lock.hold():
        backend = tiers.backend(tier)
        rw = PackRewrite(index, tiers.backend, tier, group, tiers.repo_path / "tmp", tiers.pack_size,
                         write_back=write_back, relocate=relocate, as_stored=True)  # fmt: skip
        retire: dict[PackId, list[ChunkId]] = {}
        try:
            for pack in packs:
                with index.read() as t:
                    info = t.pack_get(pack)
                if info is None or info.state != PackState.SEALED or info.tier != tier:
                    continue
                with tiers.local_copy(backend, pack_name(pack), info.size) as (path, _digest):
                    entries = file_entries(path)
                    with index.read() as t:
                        live = live_entries(t, pack, entries)
                    with open(path, "rb") as f:
                        for e in live:
                            stored = os.pread(f.fileno(), e.stored_len, e.offset)
                            rw.add(e.chunk, e.location(pack), stored, e.raw_len, e.flags)
                retire[pack] = [e.chunk for e in entries]
                result.bytes_repacked_in += info.size
                progress(info.size)
            rw.seal()
        except BaseException:
            rw.abort()
            raise
        hook("repack-built")
        objects = rw.switch(retire)
        result.packs_repacked += len(rw.result.retired)
        result.packs_written += rw.result.packs_written
        result.bytes_repacked_out += rw.result.bytes_written
        hook("repack-switched")
        rw.delete(objects)


def _reclaim_local(b: LocalBackend, name: str, pack: PackId, tier: Tier, index: Index, born_before: float,
                   dry_run: bool) -> int | None:
    """Delete the unindexed pack file ``name`` (unless ``dry_run``) and return its size, or None where it
    is not an orphan after all. A writer creates its pack file, locks it, then registers it, and holds
    the lock until the pack is sealed (``PackWriter``); so while we hold the lock, a file the index
    (read again now) still does not know is nobody's — one whose writer has yet to lock it sees it gone
    and takes another id. Only files older than ``born_before`` (a time): scratch a writer just made is
    never touched, whatever the settings."""
    try:
        fd = claim(b.path(name))
    except Conflict:  # a live writer's open pack, registered since our snapshot or about to be
        return None
    if fd is None:  # deleted since the listing
        return None
    try:
        st = os.fstat(fd)
        if st.st_mtime >= born_before:
            return None
        with index.read() as t:
            info = t.pack_get(pack)
            if (info is not None and info.tier == tier) or any(tr == tier for tr, _, _ in t.copies_of(pack)):
                return None  # registered (and sealed, or dropped by its writer) since our snapshot
        if not dry_run:
            b.delete(name)
        return st.st_size
    finally:
        os.close(fd)


def reclaim_orphans(
    tiers: Tiers, index: Index, replicas: Replicas, min_age_s: float, result: SweepResult, *, dry_run: bool = False
) -> list[str]:
    """Delete pack objects no index entry, copy or tier note explains (crashed writes and
    moves), replica copies of packs no longer indexed, and old scratch files; on the hot tier only
    once ``min_age_s`` old (a writer creates its pack file just before it registers it)."""
    found: list[str] = []
    for where, size in replicas.reclaim(dry_run=dry_run):
        found.append(where)
        if not dry_run:
            result.orphans_deleted += 1
            result.orphan_bytes += size
    with tiers.lock.hold():
        with index.read() as t:
            known = {(p, i.tier) for p, i in t.packs()}
            known |= {(p, tier) for p, tier, _, _ in t.copies()}
            known |= {(p, tier) for p, tier, _, _ in t.moves()}
            known |= {(p, Tier.WARM) for p in t.retiring()}  # other nodes may still read them
        now = time.time()
        for tier in Tier:
            if not tiers.configured(tier):
                continue
            b = tiers.backend(tier)
            for name in list(b.list("packs/")):
                pack = pack_id_from_name(name)
                if pack is None or (pack, tier) in known:
                    continue
                if not ownership.owns(index.repo_id, pack):  # not provably ours: never deleted
                    result.foreign += 1
                    continue
                if isinstance(b, LocalBackend):
                    size = _reclaim_local(b, name, pack, tier, index, now - min_age_s, dry_run)
                else:
                    try:
                        size = b.size(name)
                    except NotFound:  # deleted since the listing
                        size = None
                    if size is not None and not dry_run:
                        b.delete(name)
                if size is None:
                    continue
                found.append(f"{b.url}/{name}")
                if not dry_run:
                    result.orphans_deleted += 1
                    result.orphan_bytes += size
        tmp = tiers.repo_path / "tmp"
        if tmp.is_dir():
            for p in tmp.iterdir():
                try:
                    if p.is_file() and now - p.stat().st_mtime >= min_age_s:
                        found.append(str(p))
                        if not dry_run:
                            result.orphan_bytes += p.stat().st_size
                            p.unlink()
                            result.orphans_deleted += 1
                except FileNotFoundError:
                    continue
    return found

