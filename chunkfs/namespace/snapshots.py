"""What a mount shows besides the live tree: ``.snapshots`` and the ``@latest``/``@best`` links.

* ``/.snapshots/`` lists the tags; ``/.snapshots/<tag>/`` and ``/.snapshots/@<commit or ISO
  time>/`` are the whole tree as of that point, read-only (a ``CommitView`` answers).
* ``@latest`` and ``@best`` inside each level of the composite key (``MODEL/BASE/ADAPTER/RUN``)
  are symlinks to the matching checkpoint directory, resolved afresh on every lookup (the
  registry answers).

Both are hidden from listings of the directory that holds them (as ZFS hides ``.zfs``):
``rm -rf`` and ``cp -a`` of a tree never trip over them, and they are reachable by name.
This module decides what they contain; the FUSE layer only numbers them for the kernel
(fs/virtual.py).
"""

from __future__ import annotations

import stat

from chunkfs import clock
from chunkfs.namespace.history import History
from chunkfs.namespace.registry import Registry
from chunkfs.namespace.views import CommitView
from chunkfs.types import ROOT_INODE, Extent, InodeRecord

SNAPSHOTS = b".snapshots"
QUERY_LINKS = (b"@latest", b"@best")
READ_ONLY = ~0o222


class Snapshots:
    """Read-only answers about past trees by (commit, inode), the points ``.snapshots`` lists,
    and the query links."""

    def __init__(self, history: History, registry: Registry) -> None:
        self.history = history
        self.registry = registry
        now = clock.now_ns()
        self.directory = InodeRecord(stat.S_IFDIR | 0o555, 0, 0, 2, 0, now, now, now)
        """The attributes of ``.snapshots`` itself."""

    @staticmethod
    def hides(parent: int, name: bytes) -> bool:
        """Whether ``name`` in directory ``parent`` is ``.snapshots`` (it hides any real entry)."""
        return parent == ROOT_INODE and name == SNAPSHOTS

    # -- .snapshots -------------------------------------------------------------------------

    def points(self) -> list[tuple[bytes, int]]:
        """(name, commit) of every tag: what ``.snapshots`` lists (``@COMMIT``/``@TIME`` work by name)."""
        return [(tag.name.encode(), tag.commit) for tag in self.history.tags()]

    def point(self, name: bytes) -> int:
        """The commit that a name in ``.snapshots`` stands for (a tag, ``@123``, ``@ISO-TIME``)."""
        return self.history.resolve_point(name.decode(errors="surrogateescape"))

    # -- a past tree --------------------------------------------------------------------------

    def attrs(self, commit: int, ino: int) -> InodeRecord:
        rec = CommitView(self.history, commit).attrs(ino)
        rec.mode &= READ_ONLY
        return rec

    def lookup(self, commit: int, parent: int, name: bytes) -> int:
        ino, _ = CommitView(self.history, commit).lookup(parent, name)
        return ino

    def entries(self, commit: int, ino: int) -> list[tuple[bytes, int]]:
        return [(name, child) for name, child, _ in CommitView(self.history, commit).entries(ino)]

    def readlink(self, commit: int, ino: int) -> bytes:
        return CommitView(self.history, commit).attrs(ino).target

    def extents(self, commit: int, ino: int) -> list[Extent]:
        return CommitView(self.history, commit).extents(ino)

    # -- query links ----------------------------------------------------------------------------

    def link(self, parent: int, name: bytes) -> bytes | None:
        """The target of query link ``name`` (``@latest``, ``@best``) in real directory ``parent``."""
        if name not in QUERY_LINKS:
            return None
        target = self.registry.links(parent).get(name.decode())
        return target.encode() if target else None

    @staticmethod
    def link_attrs(target: bytes) -> InodeRecord:
        now = clock.now_ns()
        return InodeRecord(stat.S_IFLNK | 0o777, 0, 0, 1, len(target), now, now, now, target=target)
