"""``chunkfs index rebuild``: recreate the chunk and pack index from the packs alone.

Packs are self-describing (store/packfmt.py): a sealed pack's footer lists its
chunks; an unsealed one (a writer died) is walked record by record and every
record is verified against its hash before it is indexed; so is every record of
a pack whose footer is damaged (the pack is reported, and re-sealed with a fresh
footer like an unsealed one). The namespace (inodes, directories, manifests) is
kept; afterwards every manifest is checked against the rebuilt index and missing
chunks are reported.
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
    for name in sorted(repo.hot.list("packs/")):
        pack = pack_id_from_name(name)
        if pack is None:
            continue
        damaged = False
        try:
            entries, sealed = read_entries(repo.hot, name)
        except CorruptData as e:
            result.damaged.append(str(e))
            try:  # a damaged footer: its records may still be good; verify and keep those
                entries, sealed, damaged = walk_records(repo.hot, name), False, True
            except CorruptData:
                continue  # not a pack at all
        if not sealed:
            result.unsealed_packs += not damaged
            entries = [e for e in entries if _verifies(repo, name, e)]
        for e in entries:
            found.setdefault(e.chunk, ChunkLocation(pack, e.offset, e.stored_len, e.raw_len, e.flags))
        state = PackState.SEALED if sealed else PackState.OPEN
        packs[pack] = PackInfo(Tier.HOT, state, repo.hot.size(name), len(entries), "", clock.now_ns())
        result.packs += 1
        progress(1)
    with repo.index.write() as t:
        t.clear_chunk_index()
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


def _verifies(repo: Repository, name: str, entry) -> bool:
    stored = repo.hot.get_range(name, entry.offset, entry.stored_len)
    try:
        codec.decode(entry.chunk, stored, entry.raw_len, entry.flags, name)
    except CorruptData:
        return False
    return True
