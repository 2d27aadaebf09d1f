"""Deleting and repacking packs for gc (docs/gc.md, "Sweeping packs").

Every function here runs under the tier lock (store/tiers.py) and follows its
crash protocol: a new object is noted (``moves`` kind *new*) before it is
written, and an old one (kind *old*) in the same transaction that takes it out
of the index; whoever next takes the lock finishes or undoes what a killed
process left (``Tiers._resume_locked``). So a pack is never deleted while the
index still places a chunk in it, and a repack's new pack is either fully in
the index (with every chunk location switched to it) or deleted.

*Live* chunks of a pack are those that ``chunks`` or ``condemned`` locate in it
(condemned chunks keep their bytes until gc sweeps them); everything else in
a pack — chunks gc swept, records of crashed writes that were never indexed —
is dead weight that a delete or a repack reclaims.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from chunkfs import clock
from chunkfs.index import Index
from chunkfs.store.backend import LocalBackend
from chunkfs.store.packs import pack_id_from_name, pack_name, read_entries
from chunkfs.store.replicas import Replicas
from chunkfs.store.tiers import NEW, OLD, PackBuilder, Tiers, tier_name, upload_built
from chunkfs.types import ChunkId, ChunkLocation, PackId, PackInfo, PackState, Tier

log = logging.getLogger(__name__)

Hook = Callable[[str], None]


@dataclass
class PackUsage:
    pack: PackId
    info: PackInfo
    live_bytes: int = 0
    live_chunks: int = 0
    condemned: int = 0  # condemned chunks still located here (their bytes must stay)

    @property
    def fraction(self) -> float:
        return self.live_bytes / self.info.size if self.info.size else 0.0


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
    by_tier: dict = field(default_factory=dict)


def usage(index: Index) -> dict[PackId, PackUsage]:
    """How much of every pack is live, from one snapshot of the index."""
    with index.read() as t:
        out = {p: PackUsage(p, i) for p, i in t.packs()}
        for _chunk, loc in t.chunks():
            u = out.get(loc.pack)
            if u is not None:
                u.live_bytes += loc.stored_len
                u.live_chunks += 1
        for _chunk, _epoch, _ns, loc in t.condemned():
            u = out.get(loc.pack)
            if u is not None:
                u.live_bytes += loc.stored_len
                u.condemned += 1
    return out


def _tiers_of(t, pack: PackId, info: PackInfo) -> list[Tier]:
    return [info.tier] + [tier for tier, _, _ in t.copies_of(pack)]


def delete_packs(tiers: Tiers, index: Index, packs: list[PackId], hook: Hook, result: SweepResult) -> None:
    """Delete packs that hold no live chunk, on their home tier and every copy."""
    with tiers.lock.hold():
        notes: list[tuple[PackId, Tier, int]] = []
        with index.write() as t:
            now = clock.now_ns()
            for pack in packs:
                info = t.pack_get(pack)
                if info is None or info.state != PackState.SEALED:
                    continue
                for tier in _tiers_of(t, pack, info):
                    t.copy_delete(pack, tier)
                    t.move_put(pack, tier, OLD, now)
                    notes.append((pack, tier, info.size))
                t.pack_delete(pack)
                t.upload_delete(pack)
                result.packs_deleted += 1
                result.bytes_deleted += info.size
                key = tier_name(info.tier)
                result.by_tier[key] = result.by_tier.get(key, 0) + info.size
        hook("packs-unindexed")
        for pack, tier, _size in notes:
            tiers.backend(tier).delete(pack_name(pack))
            with index.write() as t:
                t.move_delete(pack, tier)


def repack(tiers: Tiers, index: Index, tier: Tier, group: str, packs: list[PackId], *, write_back: bool,
           progress: Callable[[int], None], hook: Hook, result: SweepResult) -> None:
    """Rewrite the live chunks of ``packs`` (one group's, on ``tier``) into new packs on the same tier;
    switch every chunk location and drop the old packs in one transaction, then delete them."""
    with tiers.lock.hold():
        tmpdir = tiers.repo_path / "tmp"
        tmpdir.mkdir(exist_ok=True)
        backend = tiers.backend(tier)
        built: list[tuple[PackId, int, int]] = []
        relocated: dict[ChunkId, tuple[PackId, int, ChunkLocation]] = {}
        builder: PackBuilder | None = None
        done: dict[PackId, PackInfo] = {}

        def finish() -> None:
            nonlocal builder
            if builder is None:
                return
            b, builder = builder, None
            upload_built(backend, b, built)

        try:
            for pack in packs:
                with index.read() as t:
                    info = t.pack_get(pack)
                if info is None or info.state != PackState.SEALED or info.tier != tier:
                    continue
                with tiers._local_copy(backend, pack_name(pack), info.size) as (path, _digest):
                    entries, _ = read_entries(LocalBackend(path.parent), path.name)
                    with index.read() as t:
                        if any(loc.pack == pack for _, _, _, loc in t.condemned()):
                            continue  # condemned bytes must stay where the index says
                        live = []
                        for e in entries:
                            loc = t.chunk_get(e.chunk)
                            if loc is not None and loc.pack == pack and loc.offset == e.offset:
                                live.append(e)
                    with open(path, "rb") as f:
                        for e in live:
                            stored = os.pread(f.fileno(), e.stored_len, e.offset)
                            if builder is None:
                                new = secrets.token_bytes(16)
                                with index.write() as t:
                                    t.move_put(new, tier, NEW, clock.now_ns())
                                builder = PackBuilder(new, tmpdir / f"{new.hex()}.pack")
                            entry = builder.add(e.chunk, stored, e.raw_len, e.flags)
                            loc = ChunkLocation(builder.pack, entry.offset, entry.stored_len, e.raw_len, e.flags)
                            relocated[e.chunk] = (pack, e.offset, loc)
                            if builder.size >= tiers.pack_size:
                                finish()
                done[pack] = info
                progress(info.size)
            finish()
        finally:
            if builder is not None:
                builder.discard()
        hook("repack-built")
        now = clock.now_ns()
        old_objects: list[tuple[PackId, Tier]] = []
        with index.write() as t:
            for pack, size, count in built:
                t.pack_put(pack, PackInfo(tier, PackState.SEALED, size, count, group, now))
                t.move_delete(pack, tier)
                if write_back and tier == Tier.HOT:
                    t.upload_put(pack, now)
            for chunk, (old, offset, loc) in relocated.items():
                current = t.chunk_get(chunk)
                if current is not None and current.pack == old and current.offset == offset:
                    t.chunk_put(chunk, loc)
            for pack, info in done.items():
                for tr in _tiers_of(t, pack, info):
                    t.copy_delete(pack, tr)
                    t.move_put(pack, tr, OLD, now)
                    old_objects.append((pack, tr))
                t.pack_delete(pack)
                t.upload_delete(pack)
        result.packs_repacked += len(done)
        result.packs_written += len(built)
        result.bytes_repacked_in += sum(i.size for i in done.values())
        result.bytes_repacked_out += sum(s for _, s, _ in built)
        hook("repack-switched")
        for pack, tr in old_objects:
            tiers.backend(tr).delete(pack_name(pack))
            with index.write() as t:
                t.move_delete(pack, tr)


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
        now = time.time()
        for tier in Tier:
            if not tiers.configured(tier):
                continue
            b = tiers.backend(tier)
            for name in list(b.list("packs/")):
                pack = pack_id_from_name(name)
                if pack is None or (pack, tier) in known:
                    continue
                size = b.size(name)
                if isinstance(b, LocalBackend):
                    try:
                        age = now - b.path(name).stat().st_mtime
                    except FileNotFoundError:
                        continue
                    if age < min_age_s:
                        continue
                found.append(f"{b.url}/{name}")
                if not dry_run:
                    b.delete(name)
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

