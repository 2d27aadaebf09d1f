"""``chunkfs prefetch PATH [--pin]`` and ``chunkfs unpin PATH``: stage data on the local disk.

Inference nodes pre-stage the models they serve: every chunk of the files under
PATH that lives on the warm or cold tier is fetched into the disk read cache
(ranged GETs, several at once), so that opening the model later reads local
disk only. ``--pin`` first records the chunks under the path (keys.py ``pins``):
the cache never evicts them, and a pack leaving the hot tier copies them to the
cache first, until ``unpin``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from chunkfs import clock
from chunkfs.errors import ConfigError, NotFound
from chunkfs.ops.tier import _norm, walk_files
from chunkfs.repo import Repository
from chunkfs.types import HOLE, ChunkId


@dataclass
class PrefetchResult:
    path: str
    files: int = 0
    chunks: int = 0
    bytes: int = 0  # stored bytes of the distinct chunks
    fetched_bytes: int = 0  # of those, fetched now
    local_bytes: int = 0  # already on the hot tier or in the cache
    pinned: bool = False


def chunks_under(repo: Repository, path: str) -> tuple[int, list[ChunkId]]:
    """(files, distinct chunk ids) of the files at or under ``path``, and the bases of those stored
    as deltas (docs/tiers.md, "Delta chunks": reading one reads its base)."""
    files = 0
    chunks: dict[ChunkId, None] = {}
    for ino, _ in walk_files(repo, path):
        files += 1
        for e in repo.ns.extents(ino):
            if e.chunk != HOLE:
                chunks[e.chunk] = None
    with repo.index.read() as t:
        bases = t.with_bases(set(chunks)) - chunks.keys()
    return files, [*chunks, *bases]


def stored_size(repo: Repository, chunks: list[ChunkId]) -> int:
    with repo.index.read() as t:
        return sum(loc.stored_len for c in chunks if (loc := t.chunk_get(c)) is not None)


def prefetch(
    repo: Repository, path: str, *, pin: bool = False, progress: Callable[[int], None] = lambda n: None
) -> PrefetchResult:
    """Fetch the remote chunks of the files under ``path`` into the disk read cache (and pin them)."""
    if not repo.readcache.enabled:
        raise ConfigError("cache.disk is 0: there is no disk cache to prefetch into; set it in chunkfs.toml")
    path = _norm(path)
    files, chunks = chunks_under(repo, path)
    result = PrefetchResult(path, files, len(chunks), stored_size(repo, chunks), pinned=pin)
    if pin:  # before staging: nothing staged may be evicted meanwhile
        with repo.index.write() as t:
            t.pin_put(path, clock.now_ns(), chunks)
    result.fetched_bytes, _ = repo.chunks.prefetch(chunks, progress)
    result.local_bytes = max(0, result.bytes - result.fetched_bytes)
    return result


def unpin(repo: Repository, path: str) -> None:
    path = _norm(path)
    with repo.index.write() as t:
        if not t.pin_delete(path):
            pinned = ", ".join(p for p, _, _ in t.pins()) or "none"
            raise NotFound(f"{path}: not pinned (pinned paths: {pinned})")


def pins(repo: Repository) -> list[tuple[str, int, int]]:
    """(path, pinned ns, chunks) of every pin."""
    with repo.index.read() as t:
        return [(p, ns, len(chunks)) for p, ns, chunks in t.pins()]
