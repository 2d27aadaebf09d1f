"""Paths of inodes as one transaction sees them: the tree's, the registry's and the journal's.

Names are bytes in the index and text (UTF-8, undecodable bytes as surrogates) in paths.
"""

from __future__ import annotations

from chunkfs.index import Txn
from chunkfs.types import ROOT_INODE


def path_in(t: Txn, ino: int) -> str | None:
    """One path of ``ino`` (its first name) as of transaction ``t``; None once it has no name."""
    parts = []
    while ino != ROOT_INODE:
        links = t.parents(ino)
        if not links:
            return None
        ino, name = links[0]
        parts.append(name.decode(errors="surrogateescape"))
    return "/" + "/".join(reversed(parts))


def child_path(t: Txn, parent: int, name: bytes) -> str | None:
    """The path of entry ``name`` of directory ``parent``; None when the directory has no name."""
    base = path_in(t, parent)
    if base is None:
        return None
    return base.rstrip("/") + "/" + name.decode(errors="surrogateescape")
