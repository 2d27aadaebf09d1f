"""``chunkfs stats``: what the repository holds, logically and physically — figures that add up.

Logical (what users see):

* ``logical_bytes`` — the current tree: the sum of its file sizes.
* ``versions_bytes`` — every file version the history keeps (current ones included): the sum of
  their sizes, what plain copies of all of them would take. ``versions`` counts them.

Chunks (the chunk index, raw bytes: before compression, each distinct chunk once; holes are
not chunks):

* ``unique_bytes`` = ``current_unique_bytes`` (chunks the current tree references)
  + ``history_unique_bytes`` (referenced only by older versions: what history costs)
  + ``unreferenced_bytes`` (referenced by nothing: versions gc dropped, crashed writes; the next gc
  reclaims them).
* ``stored_bytes`` — the same chunks as stored (after compression).

Packs (bytes on the tiers):

* ``pack_bytes`` = ``stored_bytes`` + ``condemned_bytes`` (chunks gc took out of use, kept until
  it sweeps them) + ``overhead_bytes`` (pack headers, record headers, footers) + ``dead_bytes``
  (space no chunk uses any more: gc repacks it away).

Ratios: ``dedup_ratio`` = versions_bytes / (current + history unique bytes): how many times
the history's bytes share chunks; ``compression_ratio`` = unique_bytes / stored_bytes;
``stored_fraction`` = pack_bytes / versions_bytes: what every kept version costs on the tiers,
per byte of plain copies.
"""

from __future__ import annotations

import stat
from dataclasses import asdict, dataclass, field

from chunkfs.repo import Repository
from chunkfs.store.pack import format as packfmt
from chunkfs.types import (
    HOLE,
    ChunkKind,
    ChunkLocation,
    Compression,
    PackState,
    flags_compression,
    flags_kind,
)

ENCODINGS = {
    Compression.NONE: "none",
    Compression.ZSTD: "zstd",
    Compression.ZSTD_PLANES2: "zstd_planes2",
    Compression.ZSTD_PLANES4: "zstd_planes4",
}
"""How ``stats`` and ``du`` name each encoding of stored chunks, ``delta_`` before it for a chunk
stored as a delta of another (namespace/deltas.py). No dtype is recorded per chunk: the byte-plane
width the re-encoding chose from the data stands for it (2: bf16/fp16, 4: fp32)."""


def count_encoding(table: dict[str, dict[str, int]], loc: ChunkLocation) -> None:
    """Add one chunk to ``table``: encoding name → chunks, raw and stored bytes."""
    name = ENCODINGS[flags_compression(loc.flags)]
    if flags_kind(loc.flags) == ChunkKind.DELTA:
        name = "delta_" + name
    row = table.setdefault(name, {"chunks": 0, "raw": 0, "stored": 0})
    row["chunks"] += 1
    row["raw"] += loc.raw_len
    row["stored"] += loc.stored_len


@dataclass
class Stats:
    files: int  # inodes of every kind, root included
    logical_bytes: int
    versions: int
    versions_bytes: int
    unique_bytes: int
    current_unique_bytes: int
    history_unique_bytes: int
    unreferenced_bytes: int
    stored_bytes: int
    condemned_bytes: int
    chunks: int
    packs: int
    pack_bytes: int
    overhead_bytes: int
    dead_bytes: int
    packs_by_tier: dict[str, int] = field(default_factory=dict)
    index_bytes: int = 0
    encodings: dict[str, dict[str, int]] = field(default_factory=dict)  # name → chunks, raw, stored (count_encoding)

    @property
    def dedup_ratio(self) -> float:
        referenced = self.current_unique_bytes + self.history_unique_bytes
        return self.versions_bytes / referenced if referenced else 1.0

    @property
    def compression_ratio(self) -> float:
        return self.unique_bytes / self.stored_bytes if self.stored_bytes else 1.0

    @property
    def stored_fraction(self) -> float:
        """Pack bytes per byte of every kept version as a plain copy: what the history really costs."""
        return self.pack_bytes / self.versions_bytes if self.versions_bytes else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(
            dedup_ratio=round(self.dedup_ratio, 4),
            compression_ratio=round(self.compression_ratio, 4),
            stored_fraction=round(self.stored_fraction, 4),
        )
        return d


def collect(repo: Repository) -> Stats:
    files, logical = repo.ns.counts()
    with repo.index.read() as t:
        current_manifests = {rec.manifest for _, rec in t.inodes() if rec.manifest}
        versions = [v for v in t.inohist_all() if stat.S_ISREG(v.record.mode)]
        history_manifests = {v.record.manifest for v in versions if v.record.manifest} - current_manifests
        current: set[bytes] = set()
        history: set[bytes] = set()
        for mid, extents in t.manifests():
            if mid in current_manifests:
                current.update(e.chunk for e in extents)
            elif mid in history_manifests:
                history.update(e.chunk for e in extents)
        current.discard(HOLE)
        history -= current
        history.discard(HOLE)
        unique = current_unique = history_unique = stored = chunks = 0
        in_pack: dict[bytes, int] = {}
        encodings: dict[str, dict[str, int]] = {}
        for chunk, loc in t.chunks():
            chunks += 1
            count_encoding(encodings, loc)
            unique += loc.raw_len
            stored += loc.stored_len
            in_pack[loc.pack] = in_pack.get(loc.pack, 0) + 1
            if chunk in current:
                current_unique += loc.raw_len
            elif chunk in history:
                history_unique += loc.raw_len
        condemned = 0
        for _chunk, _epoch, _ns, loc in t.condemned():
            condemned += loc.stored_len
            in_pack[loc.pack] = in_pack.get(loc.pack, 0) + 1
        packs = pack_bytes = overhead = 0
        by_tier: dict[str, int] = {}
        for pack, info in t.packs():
            packs += 1
            pack_bytes += info.size
            by_tier[info.tier.name.lower()] = by_tier.get(info.tier.name.lower(), 0) + 1
            sealed = info.state == PackState.SEALED
            per_chunk = packfmt.RECORD.size + (packfmt.ENTRY.size if sealed else 0)
            overhead += packfmt.HEADER.size + (packfmt.TRAILER.size if sealed else 0) + in_pack.get(pack, 0) * per_chunk
    return Stats(
        files=files,
        logical_bytes=logical,
        versions=len(versions),
        versions_bytes=sum(v.record.size for v in versions),
        unique_bytes=unique,
        current_unique_bytes=current_unique,
        history_unique_bytes=history_unique,
        unreferenced_bytes=unique - current_unique - history_unique,
        stored_bytes=stored,
        condemned_bytes=condemned,
        chunks=chunks,
        packs=packs,
        pack_bytes=pack_bytes,
        overhead_bytes=overhead,
        dead_bytes=pack_bytes - stored - condemned - overhead,
        packs_by_tier=by_tier,
        index_bytes=repo.index.used_bytes(),
        encodings=dict(sorted(encodings.items())),
    )
