"""``chunkfs index rebuild``: recreate the chunk and pack index from the packs alone.

Packs are self-describing (store/packfmt.py): a sealed pack's footer lists its
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

from collections.abc import Callable
from dataclasses import dataclass, field

from chunkfs import clock
from chunkfs.engine import codec
from chunkfs.errors import CorruptData
from chunkfs.repo import Repository
from chunkfs.store.packs import pack_id_from_name, read_entries, walk_records
from chunkfs.types import HOLE, ChunkLocation, PackInfo, PackState, Tier


@dataclass
class RebuildResult:
    packs: int = 0
    chunks: int = 0
    unsealed_packs: int = 0
    damaged: list[str] = field(default_factory=list)  # packs with a bad header or footer
    missing_chunks: int = 0  # referenced by a manifest but in no pack


def rebuild(repo: Repository, progress: Callable[[int], None] = lambda n: None) -> RebuildResult:
    result = RebuildResult()
    repo.packs.seal_all()
    found: dict[bytes, ChunkLocation] = {}
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
                entries = [e for e in entries if _verifies(backend, name, e)]
            for e in entries:
                found.setdefault(e.chunk, ChunkLocation(pack, e.offset, e.stored_len, e.raw_len, e.flags))
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
    result.chunks = len(found)
    repo.packs.recover()  # seals the unsealed packs found above
    with repo.index.read() as t:
        for _, extents in t.manifests():
            result.missing_chunks += sum(1 for e in extents if e.chunk != HOLE and e.chunk not in found)
    return result


def _verifies(backend, name: str, entry) -> bool:
    stored = backend.get_range(name, entry.offset, entry.stored_len)
    try:
        codec.decode(entry.chunk, stored, entry.raw_len, entry.flags, name)
    except CorruptData:
        return False
    return True
