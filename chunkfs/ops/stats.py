"""``chunkfs stats``: what the repository holds, logically and physically."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from chunkfs.repo import Repository


@dataclass
class Stats:
    files: int  # inodes of every kind, root included
    logical_bytes: int  # sum of file sizes, as users see them
    unique_bytes: int  # raw bytes of distinct chunks (after dedup, before compression)
    stored_bytes: int  # bytes of those chunks as stored (after compression)
    chunks: int
    packs: int
    pack_bytes: int  # bytes of pack files, headers and footers included
    packs_by_tier: dict[str, int] = field(default_factory=dict)
    index_bytes: int = 0

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.unique_bytes if self.unique_bytes else 1.0

    @property
    def compression_ratio(self) -> float:
        return self.unique_bytes / self.stored_bytes if self.stored_bytes else 1.0

    @property
    def stored_fraction(self) -> float:
        """Stored bytes per logical byte: what a checkpoint series really costs."""
        return self.stored_bytes / self.logical_bytes if self.logical_bytes else 0.0

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
    unique = stored = chunks = 0
    packs = pack_bytes = 0
    by_tier: dict[str, int] = {}
    with repo.index.read() as t:
        for _, loc in t.chunks():
            chunks += 1
            unique += loc.raw_len
            stored += loc.stored_len
        for _, info in t.packs():
            packs += 1
            pack_bytes += info.size
            by_tier[info.tier.name.lower()] = by_tier.get(info.tier.name.lower(), 0) + 1
    return Stats(files, logical, unique, stored, chunks, packs, pack_bytes, by_tier, repo.index.used_bytes())
