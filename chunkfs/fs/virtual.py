"""Entries the mount shows that are not files of the tree: snapshot views and query links.

* ``/.snapshots/`` lists the tags; ``/.snapshots/<tag>/`` and
  ``/.snapshots/@<commit or ISO time>/`` are the whole tree as of that point,
  read-only (``namespace.views.CommitView`` answers every request).
* ``@latest`` and ``@best`` inside each level of the composite key
  (``MODEL/BASE/ADAPTER/RUN``) are symlinks to the matching checkpoint
  directory, resolved afresh on every lookup (``namespace.registry``).

Both are hidden from ``readdir`` of the directory that holds them (as ZFS
hides ``.zfs``): ``rm -rf`` and ``cp -a`` of a tree never trip over them, and
they are reachable by name.

Kernel inode numbers for these entries are allocated here, above
``VIRTUAL_BASE``, and map to (commit, real inode) or to a link target. This is
FUSE bookkeeping only: what the entries contain comes from the library. A
number lives while something refers to it — the kernel (every entry reply is
a reference until it FORGETs it) or an open directory listing — and is
dropped after, so browsing snapshots on a long-lived mount does not grow the
table without bound; the same entry looked up again gets a new number.
"""

from __future__ import annotations

import itertools
import stat
import threading
from dataclasses import dataclass

from chunkfs import clock
from chunkfs.engine.file import FileContent
from chunkfs.engine.readahead import ReadAhead, ReadStream
from chunkfs.errors import NotFound, ReadOnly
from chunkfs.index.keys import ROOT_INODE
from chunkfs.namespace.views import CommitView
from chunkfs.repo import Repository
from chunkfs.types import InodeRecord

VIRTUAL_BASE = 1 << 56
SNAPSHOTS_INO = VIRTUAL_BASE
SNAPSHOTS = b".snapshots"
QUERY_LINKS = (b"@latest", b"@best")
READ_ONLY = ~0o222


@dataclass(frozen=True)
class _Node:
    commit: int  # 0 for a query link
    ino: int  # the real inode it shows; 0 for a query link
    target: bytes = b""


class Virtual:
    """Inode numbers and answers for ``.snapshots`` and the ``@latest``/``@best`` links."""

    def __init__(self, repo: Repository, read_ahead: ReadAhead) -> None:
        self.repo = repo
        self.read_ahead = read_ahead  # the open files' (openfiles.py): one pool for every reader
        self._nodes: dict[int, _Node] = {}
        self._ids: dict[_Node, int] = {}
        self._refs: dict[int, int] = {}  # virtual inode → references (kernel entries, open listings)
        self._next = itertools.count(VIRTUAL_BASE + 1)
        self._files: dict[int, tuple[FileContent, ReadStream, threading.Lock]] = {}
        self._fhs = itertools.count(1 << 40)
        self._lock = threading.Lock()
        now = clock.now_ns()
        self._dir_record = InodeRecord(stat.S_IFDIR | 0o555, 0, 0, 2, 0, now, now, now)

    @staticmethod
    def owns(ino: int) -> bool:
        return ino >= VIRTUAL_BASE

    @staticmethod
    def owns_handle(fh: int) -> bool:
        return fh >= 1 << 40

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
        """The entry if ``name`` in real directory ``parent`` is taken by the mount itself
        (``/.snapshots``): it hides any real entry of that name."""
        if parent == ROOT_INODE and name == SNAPSHOTS:
            return SNAPSHOTS_INO, self._dir_record
        return None

    def lookup_in_real(self, parent: int, name: bytes) -> tuple[int, InodeRecord] | None:
        """A query link (``@latest``, ``@best``) in real directory ``parent``, or None."""
        if name not in QUERY_LINKS:
            return None
        target = self.repo.registry.links(parent).get(name.decode())
        return self._link(target.encode()) if target else None

    def is_point(self, vino: int) -> bool:
        """Whether ``vino`` is the root of a view: a name in ``/.snapshots`` (a tag, ``@…``)."""
        node = self._nodes.get(vino)
        return node is not None and node.ino == ROOT_INODE and node.commit != 0

    def is_link(self, vino: int) -> bool:
        node = self._nodes.get(vino)
        return node is not None and node.ino == 0

    def _link(self, target: bytes) -> tuple[int, InodeRecord]:
        now = clock.now_ns()
        rec = InodeRecord(stat.S_IFLNK | 0o777, 0, 0, 1, len(target), now, now, now, target=target)
        return self._id(_Node(0, 0, target)), rec

    # -- inside .snapshots and the views ---------------------------------------------------------

    def getattr(self, vino: int) -> InodeRecord:
        if vino == SNAPSHOTS_INO:
            return self._dir_record
        node = self._node(vino)
        if node.ino == 0:
            return self._link(node.target)[1]
        rec = CommitView(self.repo.history, node.commit).attrs(node.ino)
        rec.mode &= READ_ONLY
        return rec

    def lookup(self, vparent: int, name: bytes) -> tuple[int, InodeRecord]:
        if vparent == SNAPSHOTS_INO:
            commit = self.repo.history.resolve_point(name.decode(errors="surrogateescape"))
            root = self._id(_Node(commit, ROOT_INODE))
            return root, self.getattr(root)
        node = self._node(vparent)
        ino, _ = CommitView(self.repo.history, node.commit).lookup(node.ino, name)
        vino = self._id(_Node(node.commit, ino))
        return vino, self.getattr(vino)

    def readdir(self, vino: int) -> list[tuple[bytes, int, InodeRecord]]:
        if vino == SNAPSHOTS_INO:
            out = []
            for name, commit, _created, _path in self.repo.history.tags():
                root = self._id(_Node(commit, ROOT_INODE))
                out.append((name.encode(), root, self.getattr(root)))
            return out
        node = self._node(vino)
        out = []
        for name, child, rec in CommitView(self.repo.history, node.commit).entries(node.ino):
            rec.mode &= READ_ONLY
            out.append((name, self._id(_Node(node.commit, child)), rec))
        return out

    def readlink(self, vino: int) -> bytes:
        node = self._node(vino)
        if node.ino == 0:
            return node.target
        return CommitView(self.repo.history, node.commit).attrs(node.ino).target

    # -- reading historic files ------------------------------------------------------------------

    def open(self, vino: int, writing: bool) -> int:
        if writing:
            raise ReadOnly("snapshots are read-only")
        node = self._node(vino)
        view = CommitView(self.repo.history, node.commit)
        content = self.repo.content_of(view.extents(node.ino))
        with self._lock:
            fh = next(self._fhs)
            self._files[fh] = (content, ReadStream(), threading.Lock())
        return fh

    def read(self, fh: int, offset: int, size: int) -> bytes:
        content, stream, lock = self._files[fh]
        return self.read_ahead.read(content, stream, offset, size, lock)

    def close(self, fh: int) -> None:
        with self._lock:
            entry = self._files.pop(fh, None)
        if entry is not None:
            self.read_ahead.cancel(entry[1])

