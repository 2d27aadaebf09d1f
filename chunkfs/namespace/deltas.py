"""Which chunk of a run to store as a delta of which: the plan a re-encoding repack follows.

A full fine-tune changes every weight a little at every step: exact dedup stores each
checkpoint again, but the XOR of a tensor with the same tensor one checkpoint later is mostly
zero bytes in its high planes (engine/codec.py, ``encode_delta``). The pairs come from the
tree, where they are known for free: the step directories of one run (``registry.step_pattern``,
the pack group), and in each, the files by their path below the step directory — the chunk at
the same offset and length of the same file one checkpoint *later* is the base. So is, for
a path rewritten in place or replaced by rename at every save (``latest/model.safetensors``),
the chunk at the same place of its next version (version history, docs/versions.md).

**Reverse deltas.** The newest checkpoint of a run is stored whole and the older ones as
deltas of their successor, never the other way: the checkpoint read most (the latest: resumed
from, evaluated, served) reads at full speed, and retention, which drops old checkpoints,
drops deltas, never a base that newer ones need. Chains are bounded: every ``chain``-th
checkpoint, counted from the newest, is whole, so reading one needs at most ``chain`` chunks.

Only chunks stored in this run's packs pair up (a base then tiers with its deltas), and a
chunk already stored as a delta keeps its place in its chain.
"""

from __future__ import annotations

import re
import stat
from typing import NamedTuple

from chunkfs.config import RegistrySettings
from chunkfs.engine.codec import MAX_DELTA_DEPTH
from chunkfs.errors import ChunkfsError
from chunkfs.index.txn import Txn
from chunkfs.namespace.registry.keypath import step_of
from chunkfs.namespace.tree import Namespace
from chunkfs.types import HOLE, ChunkId, Extent


def plan(ns: Namespace, group: str, chain: int) -> dict[ChunkId, ChunkId]:
    """Chunk → base for the chunks of run ``group`` worth trying as deltas (``ChunkIO.recompress``
    keeps a delta only where it is smaller than the chunk stored alone); empty when ``chain`` < 2."""
    if chain < 2:
        return {}
    pattern = re.compile((ns.registry.settings if ns.registry is not None else RegistrySettings()).step_pattern)
    try:
        run = ns.resolve(group)
    except ChunkfsError:  # gone, or no longer a directory: nothing to pair
        return {}
    with ns.index.read() as t:
        steps = sorted(
            (step, ino)
            for name, ino in t.dirents(run)
            if (step := step_of(name.decode(errors="surrogateescape"), pattern)) is not None
        )
        depth: dict[ChunkId, int] = {}
        bases: dict[ChunkId, ChunkId] = {}

        def pair(extents: list[Extent], newer: list[Extent] | None) -> None:
            for chunk, base in _pairs(extents, newer):
                if chunk in depth or base not in depth or chunk in _chain(t, base):
                    continue
                if not (_in_group(t, chunk, group) and _in_group(t, base, group)):
                    continue
                d = depth[base] + 1
                if d < chain:
                    bases[chunk], depth[chunk] = base, d
            for e in extents:
                if e.chunk not in depth:
                    depth[e.chunk] = len(_chain(t, e.chunk))

        newer: dict[bytes, list[Extent]] = {}
        for _step, ino in reversed(steps):  # the checkpoints of the run, newest first
            files = {f.rel: f.extents for f in _files(t, ino, b"")}
            for rel, extents in files.items():
                pair(extents, newer.get(rel))
            newer = files
        for f in _files(t, run, b""):  # then each path's older versions
            pair(f.extents, None)
            newer_extents = f.extents
            for older in _history(t, f.parent, f.name, f.manifest):
                pair(older, newer_extents)
                newer_extents = older
    return bases


class _File(NamedTuple):
    rel: bytes  # path below the directory walked
    parent: int
    name: bytes
    manifest: int
    extents: list[Extent]


def _files(t: Txn, ino: int, prefix: bytes) -> list[_File]:
    """Every regular file below directory ``ino`` (none if it is not one)."""
    out = []
    for name, child in t.dirents(ino):
        rec = t.inode_get(child)
        if rec is None:
            continue
        if stat.S_ISDIR(rec.mode):
            out += _files(t, child, prefix + name + b"/")
        elif stat.S_ISREG(rec.mode) and rec.manifest:
            out.append(_File(prefix + name, ino, name, rec.manifest, t.manifest_get(rec.manifest) or []))
    return out


def _history(t: Txn, parent: int, name: bytes, current: int) -> list[list[Extent]]:
    """The earlier contents of the path ``parent``/``name`` (now manifest ``current``), newest
    first: the versions of the inodes that held the name (a file rewritten in place; a new file
    renamed over it at each save)."""
    out: list[list[Extent]] = []
    seen = {current}
    for _commit, child in t.dirhist(parent, name):
        for v in t.versions(child) if child else ():
            if v.record.manifest and stat.S_ISREG(v.record.mode) and v.record.manifest not in seen:
                seen.add(v.record.manifest)
                out.append(t.manifest_get(v.record.manifest) or [])
    return out


def _pairs(extents: list[Extent], newer: list[Extent] | None) -> list[tuple[ChunkId, ChunkId]]:
    """(chunk, the chunk of ``newer`` over the same bytes) for every extent of ``extents`` that
    has one of the same offset and length and other content; when few do (a header that grew by
    a few bytes shifts every tensor), extents pair by position if both files have as many."""
    if not newer:
        return []
    at = {}
    offset = 0
    for e in newer:
        at[(offset, e.length)] = e.chunk
        offset += e.length
    pairs = []
    offset = 0
    for e in extents:
        base = at.get((offset, e.length))
        if base is not None:
            pairs.append((e.chunk, base))
        offset += e.length
    if len(pairs) * 2 < len(extents) and len(extents) == len(newer):
        pairs = [(a.chunk, b.chunk) for a, b in zip(extents, newer, strict=True) if a.length == b.length]
    return [(c, b) for c, b in pairs if c != b and c != HOLE and b != HOLE]


def _in_group(t: Txn, chunk: ChunkId, group: str) -> bool:
    """Whether ``chunk`` lies in one of this node's packs of ``group`` (in a shared repository
    another node's packs of the run move with that node, not with its deltas)."""
    loc = t.chunk_get(chunk)
    info = t.pack_get(loc.pack) if loc is not None else None
    return info is not None and info.group == group and not t.foreign(loc.pack)


def _chain(t: Txn, chunk: ChunkId) -> list[ChunkId]:
    """The bases ``chunk`` is stored against already, nearest first (empty: stored whole)."""
    chain: list[ChunkId] = []
    while (chunk := t.delta_base(chunk)) is not None and len(chain) <= MAX_DELTA_DEPTH:
        chain.append(chunk)
    return chain
