"""Paths of inodes as one transaction sees them: the tree's, the registry's, the journal's, and
the history's (``Paths``: retention, and the version drops of a shared repository's gc).

Names are bytes in the index and text (UTF-8, undecodable bytes as surrogates) in paths.
"""

from __future__ import annotations

from collections import defaultdict

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


class Paths:
    """Every inode's most recent name, from the directory history (removed ones included)."""

    def __init__(self, t: Txn) -> None:
        self.link: dict[int, tuple[int, int, bytes]] = {}  # child → (commit, parent, name)
        self.children: dict[int, set[tuple[bytes, int]]] = defaultdict(set)  # dir → {(name, child)}
        for parent, name, commit, child in t.dirhist_all():
            if child:
                self.children[parent].add((name, child))
                have = self.link.get(child)
                if have is None or commit > have[0]:
                    self.link[child] = (commit, parent, name)
        self._paths: dict[int, str] = {ROOT_INODE: ""}

    def path(self, ino: int) -> str:
        chain = []
        cur = ino
        while cur not in self._paths:
            got = self.link.get(cur)
            if got is None or len(chain) > 4096:
                self._paths[cur] = f"/.orphan-{cur}"
                break
            chain.append(cur)
            cur = got[1]
        for node in reversed(chain):
            _, parent, name = self.link[node]
            self._paths[node] = self._paths[parent] + "/" + name.decode("utf-8", "surrogateescape")
        return self._paths[ino] or "/"

    def parent(self, ino: int) -> int | None:
        got = self.link.get(ino)
        return got[1] if got is not None else None
