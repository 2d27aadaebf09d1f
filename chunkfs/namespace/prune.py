"""Dropping file versions from the history, and finding what the rest still references.

gc's *mark* (docs/gc.md): one node's ``chunkfs gc`` (ops/gc.py) and every node applying
a shared repository's gc entry (cluster/maintenance.py) drop versions and then ask which
manifests and chunks are still live, with the same rules — kept here, once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from chunkfs.index import Txn
from chunkfs.types import HOLE


def still_droppable(t: Txn, ino: int, commit: int, tags: list[int]) -> bool:
    """Whether a version a plan (made in an earlier snapshot, or on another node) drops may
    still go: it exists, it was not tagged meanwhile, and it is not (any more) the current
    version of a live inode."""
    versions = t.versions(ino)
    if not any(v.commit == commit for v in versions):
        return False
    if t.inode_get(ino) is not None and versions[0].commit == commit:
        return False
    return all((v := t.version_at(ino, c)) is None or v.commit != commit for c in tags)


def drop_versions(t: Txn, drops: Iterable[tuple[int, int]]) -> None:
    """Delete the versions ``(ino, commit)``, then the directory history nothing is left of."""
    inos = set()
    for ino, commit in drops:
        t.version_delete(ino, commit)
        inos.add(ino)
    _tidy_dirhist(t, inos)


def _tidy_dirhist(t: Txn, inos: set[int]) -> None:
    """Drop the directory history of files none of whose versions is left, and removal
    markers that no longer follow anything."""
    gone = {ino for ino in inos if t.inode_get(ino) is None and not t.versions(ino)}
    if not gone:
        return
    entries: dict[tuple[int, bytes], list[tuple[int, int]]] = defaultdict(list)
    for parent, name, commit, child in t.dirhist_all():
        entries[(parent, name)].append((commit, child))
    for (parent, name), hist in entries.items():
        if not any(child in gone for _, child in hist):
            continue
        hist.sort()  # oldest first
        kept: list[tuple[int, int]] = []
        for commit, child in hist:
            if child in gone or (child == 0 and (not kept or kept[-1][1] == 0)):
                t.dirhist_delete(parent, name, commit)
            else:
                kept.append((commit, child))


def mark(t: Txn, dropped: set[tuple[int, int]] = frozenset()) -> tuple[set[bytes], list[int]]:
    """(every chunk still referenced, every manifest nothing references) once the versions
    ``dropped`` are gone: referenced means by a remaining version, a current inode or a pin, or
    as the base of a referenced delta chunk."""
    live_manifests: set[int] = set()
    for v in t.inohist_all():
        if v.record.manifest and (v.ino, v.commit) not in dropped:
            live_manifests.add(v.record.manifest)
    for _ino, rec in t.inodes():
        if rec.manifest:
            live_manifests.add(rec.manifest)
    live: set[bytes] = set()
    dead_manifests = []
    for mid, extents in t.manifests():
        if mid in live_manifests:
            live.update(e.chunk for e in extents)
        else:
            dead_manifests.append(mid)
    for _path, _ns, chunks in t.pins():
        live.update(chunks)
    live.discard(HOLE)
    return t.with_bases(live), dead_manifests
