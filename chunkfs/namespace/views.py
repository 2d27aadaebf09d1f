"""A read-only way to walk a tree, the same for the current tree and for a past commit.

Export, restore, diff and the mount's ``.snapshots`` directory walk trees;
with a ``TreeView`` they do not care whether the tree is the live one or the
tree as of commit C.
"""

from __future__ import annotations

from typing import Protocol

from chunkfs.namespace.history import History
from chunkfs.namespace.tree import Namespace
from chunkfs.types import Extent, InodeRecord


class TreeView(Protocol):
    def attrs(self, ino: int) -> InodeRecord: ...

    def lookup(self, parent: int, name: bytes) -> tuple[int, InodeRecord]: ...

    def entries(self, ino: int) -> list[tuple[bytes, int, InodeRecord]]: ...

    def extents(self, ino: int) -> list[Extent]: ...

    def resolve(self, path: str) -> int: ...


class CurrentView:
    """The live tree."""

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns

    def attrs(self, ino: int) -> InodeRecord:
        return self.ns.getattr(ino)

    def lookup(self, parent: int, name: bytes) -> tuple[int, InodeRecord]:
        return self.ns.lookup(parent, name)

    def entries(self, ino: int) -> list[tuple[bytes, int, InodeRecord]]:
        return self.ns.readdir(ino)

    def extents(self, ino: int) -> list[Extent]:
        return self.ns.extents(ino)

    def resolve(self, path: str) -> int:
        return self.ns.resolve(path)


class CommitView:
    """The tree exactly as it was after commit ``commit``."""

    def __init__(self, history: History, commit: int) -> None:
        self.history = history
        self.commit = commit

    def attrs(self, ino: int) -> InodeRecord:
        return self.history.getattr_at(ino, self.commit).record

    def lookup(self, parent: int, name: bytes) -> tuple[int, InodeRecord]:
        v = self.history.lookup_at(parent, name, self.commit)
        return v.ino, v.record

    def entries(self, ino: int) -> list[tuple[bytes, int, InodeRecord]]:
        return [(name, v.ino, v.record) for name, v in self.history.readdir_at(ino, self.commit)]

    def extents(self, ino: int) -> list[Extent]:
        return self.history.extents(self.history.getattr_at(ino, self.commit))

    def resolve(self, path: str) -> int:
        return self.history.resolve_at(path, self.commit).ino
