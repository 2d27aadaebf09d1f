"""Kernel inode numbers for the entries a mount shows besides the live tree.

What ``.snapshots`` and the ``@latest``/``@best`` links contain is decided in
``namespace/snapshots.py``; this module only gives those entries numbers the kernel can
use, above ``VIRTUAL_BASE``, each mapping to (commit, real inode) or to a link target.
A number lives while something refers to it — the kernel (every entry reply is a
reference until it FORGETs it) or an open directory listing — and is dropped after, so
browsing snapshots on a long-lived mount does not grow the table without bound; the same
entry looked up again gets a new number.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

from chunkfs.errors import NotFound, ReadOnly
from chunkfs.namespace.snapshots import SNAPSHOTS, Snapshots
from chunkfs.types import ROOT_INODE, Extent, InodeRecord

VIRTUAL_BASE = 1 << 56
SNAPSHOTS_INO = VIRTUAL_BASE

__all__ = ["SNAPSHOTS", "SNAPSHOTS_INO", "VIRTUAL_BASE", "Virtual"]


@dataclass(frozen=True)
class _Node:
    commit: int  # 0 for a query link
    ino: int  # the real inode it shows; 0 for a query link
    target: bytes = b""


class Virtual:
    """Inode numbers for ``.snapshots``, what is inside it, and the query links."""

    def __init__(self, snapshots: Snapshots) -> None:
        self.snapshots = snapshots
        self._nodes: dict[int, _Node] = {}
        self._ids: dict[_Node, int] = {}
        self._refs: dict[int, int] = {}  # virtual inode → references (kernel entries, open listings)
        self._next = itertools.count(VIRTUAL_BASE + 1)
        self._lock = threading.Lock()

    @staticmethod
    def owns(ino: int) -> bool:
        return ino >= VIRTUAL_BASE

    def _id(self, node: _Node) -> int:
        with self._lock:
            vino = self._ids.get(node)
            if vino is None:
                vino = self._ids[node] = next(self._next)
                self._nodes[vino] = node
            return vino

    def hold(self, vinos: list[int]) -> None:
        """Count a reference to each of ``vinos`` (an entry reply, or a listing that will send them)."""
        with self._lock:
            for vino in vinos:
                if vino in self._nodes:
                    self._refs[vino] = self._refs.get(vino, 0) + 1

    def release(self, refs: list[tuple[int, int]]) -> None:
        """Drop ``n`` references of each (virtual inode, n); a number nothing refers to is forgotten."""
        with self._lock:
            for vino, n in refs:
                left = self._refs.get(vino, 0) - n
                if left > 0:
                    self._refs[vino] = left
                    continue
                self._refs.pop(vino, None)
                node = self._nodes.pop(vino, None)
                if node is not None:
                    del self._ids[node]

    def size(self) -> int:
        """How many virtual inode numbers are alive (for tests and the curious)."""
        with self._lock:
            return len(self._nodes)

    def _node(self, vino: int) -> _Node:
        node = self._nodes.get(vino)
        if node is None:
            raise NotFound(f"inode {vino}: stale snapshot entry")
        return node

    # -- entries in real directories ---------------------------------------------------------

    def reserved(self, parent: int, name: bytes) -> tuple[int, InodeRecord] | None:
        """The entry if ``name`` in real directory ``parent`` is taken by the mount itself."""
        if self.snapshots.hides(parent, name):
            return SNAPSHOTS_INO, self.snapshots.directory
        return None

    def lookup_in_real(self, parent: int, name: bytes) -> tuple[int, InodeRecord] | None:
        """A query link (``@latest``, ``@best``) in real directory ``parent``, or None."""
        target = self.snapshots.link(parent, name)
        return None if target is None else self._link(target)

    def is_point(self, vino: int) -> bool:
        """Whether ``vino`` is the root of a view: a name in ``/.snapshots`` (a tag, ``@…``)."""
        node = self._nodes.get(vino)
        return node is not None and node.ino == ROOT_INODE and node.commit != 0

    def is_link(self, vino: int) -> bool:
        node = self._nodes.get(vino)
        return node is not None and node.ino == 0

    def _link(self, target: bytes) -> tuple[int, InodeRecord]:
        return self._id(_Node(0, 0, target)), self.snapshots.link_attrs(target)

    # -- inside .snapshots and the views ---------------------------------------------------------

    def getattr(self, vino: int) -> InodeRecord:
        if vino == SNAPSHOTS_INO:
            return self.snapshots.directory
        node = self._node(vino)
        if node.ino == 0:
            return self.snapshots.link_attrs(node.target)
        return self.snapshots.attrs(node.commit, node.ino)

    def lookup(self, vparent: int, name: bytes) -> tuple[int, InodeRecord]:
        if vparent == SNAPSHOTS_INO:
            vino = self._id(_Node(self.snapshots.point(name), ROOT_INODE))
        else:
            node = self._node(vparent)
            vino = self._id(_Node(node.commit, self.snapshots.lookup(node.commit, node.ino, name)))
        return vino, self.getattr(vino)

    def readdir(self, vino: int) -> list[tuple[bytes, int]]:
        """(name, virtual inode) of every entry of a snapshot directory."""
        if vino == SNAPSHOTS_INO:
            return [(name, self._id(_Node(commit, ROOT_INODE))) for name, commit in self.snapshots.points()]
        node = self._node(vino)
        return [(name, self._id(_Node(node.commit, ino))) for name, ino in self.snapshots.entries(node.commit, node.ino)]

    def readlink(self, vino: int) -> bytes:
        node = self._node(vino)
        return node.target if node.ino == 0 else self.snapshots.readlink(node.commit, node.ino)

    def extents(self, vino: int, writing: bool) -> list[Extent]:
        """What a snapshot file holds, for ``OpenFiles.open_version``; snapshots are read-only."""
        if writing:
            raise ReadOnly("snapshots are read-only")
        node = self._node(vino)
        return self.snapshots.extents(node.commit, node.ino)
