"""``chunkfs diff A B``: what changed between two versions of a file or a tree.

Files are compared by their chunk lists first (equal lists: equal content,
nothing read). For a changed file in a tensor format the regions (tensors) of
both versions are compared: a region whose bytes sit in the same chunks at the
same offsets is unchanged without reading; otherwise both are read and the
differing bytes counted.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

from chunkfs.engine.regions import count_differing, regions
from chunkfs.repo import Repository
from chunkfs.types import Extent, Version

BLOCK = 4 << 20


@dataclass
class TensorChange:
    name: str
    status: str  # "changed", "added", "removed"
    size_a: int
    size_b: int
    bytes_changed: int


@dataclass
class FileChange:
    path: str
    status: str  # "changed", "added", "removed", "type"
    size_a: int = 0
    size_b: int = 0
    format: str = ""
    tensors: list[TensorChange] = field(default_factory=list)
    tensors_unchanged: int = 0


@dataclass
class Side:
    """One side of a diff: a repository path as of a commit (None: now)."""

    path: str
    commit: int | None


def _version(repo: Repository, side: Side) -> Version:
    commit = side.commit if side.commit is not None else repo.history.last_commit()
    return repo.history.resolve_at(side.path, commit)


def diff(repo: Repository, a: Side, b: Side) -> list[FileChange]:
    last = repo.history.last_commit()
    at_a = a.commit if a.commit is not None else last
    at_b = b.commit if b.commit is not None else last
    va, vb = repo.history.resolve_at(a.path, at_a), repo.history.resolve_at(b.path, at_b)
    if stat.S_ISDIR(va.record.mode) and stat.S_ISDIR(vb.record.mode):
        return _diff_trees(repo, (va, at_a), (vb, at_b), "")
    if stat.S_IFMT(va.record.mode) != stat.S_IFMT(vb.record.mode):
        return [FileChange(b.path, "type", va.record.size, vb.record.size)]
    change = _diff_files(repo, va, vb, b.path)
    return [change] if change else []


def _diff_trees(repo: Repository, a: tuple[Version, int], b: tuple[Version, int], prefix: str) -> list[FileChange]:
    (va, at_a), (vb, at_b) = a, b
    entries_a = dict(repo.history.readdir_at(va.ino, at_a))
    entries_b = dict(repo.history.readdir_at(vb.ino, at_b))
    out: list[FileChange] = []
    for name in sorted(entries_a.keys() | entries_b.keys()):
        path = f"{prefix}/{name.decode(errors='replace')}"
        xa, xb = entries_a.get(name), entries_b.get(name)
        if xa is None or xb is None:
            present = xa or xb
            status = "added" if xa is None else "removed"
            if stat.S_ISDIR(present.record.mode):
                out.append(FileChange(path + "/", status))
            else:
                out.append(FileChange(path, status, xa.record.size if xa else 0, xb.record.size if xb else 0))
        elif stat.S_ISDIR(xa.record.mode) and stat.S_ISDIR(xb.record.mode):
            out += _diff_trees(repo, (xa, at_a), (xb, at_b), path)
        elif stat.S_IFMT(xa.record.mode) != stat.S_IFMT(xb.record.mode):
            out.append(FileChange(path, "type", xa.record.size, xb.record.size))
        elif (change := _diff_files(repo, xa, xb, path)) is not None:
            out.append(change)
    return out


def _diff_files(repo: Repository, va: Version, vb: Version, path: str) -> FileChange | None:
    if stat.S_ISLNK(va.record.mode):
        return None if va.record.target == vb.record.target else FileChange(path, "changed")
    ea, eb = repo.history.extents(va), repo.history.extents(vb)
    if ea == eb:
        return None
    change = FileChange(path, "changed", va.record.size, vb.record.size)
    ca, cb = repo.content_of(ea), repo.content_of(eb)
    fmt_a, regions_a = regions(ca.read, ca.size)
    fmt_b, regions_b = regions(cb.read, cb.size)
    if fmt_a != fmt_b or not regions_a or not regions_b:
        return change
    change.format = fmt_b
    by_name_a = {name: (start, end) for name, start, end in regions_a}
    by_name_b = {name: (start, end) for name, start, end in regions_b}
    for name in list(by_name_a) + [n for n in by_name_b if n not in by_name_a]:
        ra, rb = by_name_a.get(name), by_name_b.get(name)
        if ra is None or rb is None:
            size = (rb or ra)[1] - (rb or ra)[0]
            status = "added" if ra is None else "removed"
            change.tensors.append(TensorChange(name, status, size if ra else 0, size if rb else 0, size))
        elif _same_chunks(ea, ra, eb, rb):
            change.tensors_unchanged += 1
        elif differing := _region_diff(ca, ra, cb, rb):
            change.tensors.append(TensorChange(name, "changed", ra[1] - ra[0], rb[1] - rb[0], differing))
        else:
            change.tensors_unchanged += 1
    return change


def _covering(extents: list[Extent], start: int, end: int) -> tuple:
    """The chunks holding bytes [start, end), with where the range starts in the first."""
    pos, chunks, first = 0, [], 0
    for e in extents:
        if pos + e.length > start and pos < end:
            if not chunks:
                first = start - pos
            chunks.append(e.chunk)
        pos += e.length
        if pos >= end:
            break
    return first, end - start, tuple(chunks)


def _same_chunks(ea: list[Extent], ra: tuple[int, int], eb: list[Extent], rb: tuple[int, int]) -> bool:
    """True when both regions lie in the same chunks at the same offsets: equal, nothing read."""
    return _covering(ea, *ra) == _covering(eb, *rb)


def _region_diff(ca, ra: tuple[int, int], cb, rb: tuple[int, int]) -> int:
    """Bytes that differ between two regions (a size change counts the extra bytes)."""
    (sa, ea), (sb, eb) = ra, rb
    n = min(ea - sa, eb - sb)
    differing = abs((ea - sa) - (eb - sb))
    for off in range(0, n, BLOCK):
        size = min(BLOCK, n - off)
        differing += count_differing(ca.read(sa + off, size), cb.read(sb + off, size))
    return differing
