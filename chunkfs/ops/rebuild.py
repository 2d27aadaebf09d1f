"""``chunkfs index rebuild``: recreate the chunk and pack index from the packs alone.

A damaged index (truncated, corrupt, missing: ``index/check.py`` finds it, in a
child process) is first moved aside to ``REPO/index.damaged-<time>/``, a new one
is made, and every record that can still be read out of the damaged copy is
salvaged into it (the tree, the history, the registry, whatever survived;
dangling directory entries are dropped). Then, as for a whole index:

Packs are self-describing (store/pack/format.py): a sealed pack's footer lists its
chunks; an unsealed one (a writer died) is walked record by record and every
record is verified against its hash before it is indexed; so is every record of
a pack whose footer is damaged (the pack is reported, and re-sealed with a fresh
footer like an unsealed one). The namespace (inodes, directories, manifests) is
kept; afterwards every manifest is checked against the rebuilt index and missing
chunks are reported.

Every configured tier is listed (hot, then warm, then cold): a pack's home is
the first tier it is found on, so a hot pack with a write-back copy on warm
stays at home on hot (its ``copies`` entry is kept), and packs already moved to
warm or cold keep being indexed — a rebuild never drops them.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chunkfs import clock, config
from chunkfs.engine import codec
from chunkfs.errors import CorruptData, NotFound
from chunkfs.index import Index, check
from chunkfs.repo import Repository, take_lock
from chunkfs.store.backends import ownership
from chunkfs.store.backends.local import LocalBackend
from chunkfs.store.pack.files import delta_bases, pack_id_from_name, read_entries, walk_records
from chunkfs.types import HOLE, ChunkKind, ChunkLocation, PackInfo, PackState, Tier


@dataclass
class RebuildResult:
    index_damaged: str = ""  # why the index was rebuilt from scratch ('' if it was whole)
    moved_to: str = ""  # where the damaged index was kept
    salvaged: dict[str, int] = field(default_factory=dict)  # records salvaged per database
    dangling: int = 0  # directory entries dropped because an inode they named was lost
    packs: int = 0
    chunks: int = 0
    unsealed_packs: int = 0
    damaged: list[str] = field(default_factory=list)  # packs with a bad header or footer
    missing_chunks: int = 0  # referenced by a manifest but in no pack


def rebuild_repository(path: Path, progress: Callable[[int], None] = lambda n: None) -> RebuildResult:
    """``chunkfs index rebuild``: salvage a damaged index first (see the module docstring), then
    index every pack again. Needs the repository unmounted (it takes the write lock)."""
    path = Path(path).resolve()
    if not (path / config.CONFIG_NAME).exists():
        raise NotFound(f"{path}: not a chunkfs repository (no {config.CONFIG_NAME})")
    result = RebuildResult()
    lock = take_lock(path)
    try:
        index_dir = path / "index"
        try:
            check.walk(index_dir)
        except (CorruptData, NotFound) as e:
            result.index_damaged = str(e)
            _start_over(path, index_dir, result)
    finally:
        os.close(lock)
    with Repository(path) as repo:
        if result.index_damaged:
            result.dangling = repo.ns.drop_dangling_links()
        rebuild(repo, progress, result)
    return result


def _start_over(path: Path, index_dir: Path, result: RebuildResult) -> None:
    """Keep the damaged index aside, make a new one and salvage what can be read into it."""
    if index_dir.exists():
        aside = path / f"index.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
        os.rename(index_dir, aside)
        result.moved_to = str(aside)
    fresh = Index(index_dir, create=True)
    try:
        if result.moved_to and (Path(result.moved_to) / check.DATA).exists():
            (path / "tmp").mkdir(exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path / "tmp", prefix="salvage-") as scratch:
                result.salvaged = fresh.salvage_from(Path(result.moved_to), Path(scratch))
        if not result.salvaged.get("meta"):  # the repository id is lost with it: the hot tier's marker has it
            settings = config.load(path / config.CONFIG_NAME)
            marker = ownership.owner(LocalBackend(path / settings.tiers.hot))
            if marker and len(marker.get("repo_id", "")) == 32:
                with fresh.write() as t:
                    t.repo_id_put(bytes.fromhex(marker["repo_id"]))
    finally:
        fresh.close()


def rebuild(
    repo: Repository, progress: Callable[[int], None] = lambda n: None, result: RebuildResult | None = None
) -> RebuildResult:
    """Index the chunks of every pack on every tier again (the namespace is kept)."""
    result = result or RebuildResult()
    repo.packs.seal_all()
    found: dict[bytes, ChunkLocation] = {}
    bases: dict[bytes, bytes] = {}  # delta chunk → base (``deltas``)
    unverified: list[bytes] = []  # delta records of damaged packs: verified once their bases are indexed
    packs: dict[bytes, PackInfo] = {}
    with repo.index.read() as t:
        groups = {p: i.group for p, i in t.packs()}  # keep what the index knew of each pack's run
    for tier in Tier:
        if not repo.tiers.configured(tier):
            continue
        backend = repo.tiers.backend(tier)
        for name in sorted(backend.list("packs/")):
            pack = pack_id_from_name(name)
            if pack is None or pack in packs:
                continue
            damaged = False
            try:
                entries, sealed = read_entries(backend, name)
            except CorruptData as e:
                result.damaged.append(str(e))
                try:  # a damaged footer: its records may still be good; verify and keep those
                    entries, sealed, damaged = walk_records(backend, name), False, True
                except CorruptData:
                    continue  # not a pack at all
            if not sealed:
                if tier != Tier.HOT:
                    continue  # only hot packs are ever open; a remote one without a footer is damage
                result.unsealed_packs += not damaged
                entries = [e for e in entries if _verifies(backend, name, e, unverified)]
            first = [e for e in entries if e.chunk not in found]  # a chunk in several packs: the first found
            for e in first:
                found[e.chunk] = ChunkLocation(pack, e.offset, e.stored_len, e.raw_len, e.flags)
            bases.update(delta_bases(backend, name, first))
            state = PackState.SEALED if sealed else PackState.OPEN
            packs[pack] = PackInfo(tier, state, backend.size(name), len(entries), groups.get(pack, ""), clock.now_ns())
            result.packs += 1
            progress(1)
    with repo.index.write() as t:
        t.clear_chunk_index()
        t.gc_state_clear()  # every chunk found in a pack is indexed again: nothing stays condemned
        for pack, info in packs.items():
            t.pack_put(pack, info)
        for chunk, loc in found.items():
            t.chunk_put(chunk, loc)
        for chunk, base in bases.items():
            t.delta_put(chunk, base)
    for chunk in unverified:
        try:
            repo.chunks.get(chunk, 0)
        except CorruptData:
            with repo.index.write() as t:
                t.chunk_delete(chunk)
            found.pop(chunk, None)
    result.chunks = len(found)
    repo.packs.recover()  # seals the unsealed packs found above
    with repo.index.read() as t:
        for _, extents in t.manifests():
            result.missing_chunks += sum(1 for e in extents if e.chunk != HOLE and e.chunk not in found)
    return result


def _verifies(backend, name: str, entry, unverified: list[bytes]) -> bool:
    """Whether a record found by walking a pack decodes to its chunk id (a delta needs its base:
    noted in ``unverified``, checked once the index locates the base)."""
    if entry.flags >> 4 == ChunkKind.DELTA:
        unverified.append(entry.chunk)
        return True
    stored = backend.get_range(name, entry.offset, entry.stored_len)
    try:
        codec.decode(entry.chunk, stored, entry.raw_len, entry.flags, name)
    except CorruptData:
        return False
    return True
