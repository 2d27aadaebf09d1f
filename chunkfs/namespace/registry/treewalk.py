"""The directory tree as the registry reads it inside an index transaction.

Records are keyed by path, but the tree's hooks speak in inodes; these helpers
go between the two without leaving the caller's transaction, so what they see
is exactly what the write being recorded sees.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from typing import Any

from chunkfs.errors import NotFound
from chunkfs.index import Txn
from chunkfs.namespace import paths
from chunkfs.namespace.registry.keypath import components
from chunkfs.types import ROOT_INODE


def file_name(name: str | bytes) -> str:
    """A directory entry's name as text (bytes that are not UTF-8 become surrogates, and back)."""
    return name.decode(errors="surrogateescape") if isinstance(name, bytes) else name


def path_in(t: Txn, ino: int) -> str:
    """The path of ``ino`` as the transaction ``t`` sees it."""
    path = paths.path_in(t, ino)
    if path is None:
        raise NotFound(f"inode {ino}: has no parent (unlinked)")
    return path


def resolve(t: Txn, path: str) -> int:
    """The inode at ``path``; ``NotFound`` if there is none."""
    ino = ROOT_INODE
    for part in components(path):
        child = t.dirent_get(ino, part.encode(errors="surrogateescape"))
        if child is None:
            raise NotFound(f"{path}: no such file or directory")
        ino = child
    return ino


def inode_of(t: Txn, target: int | str) -> int:
    """``target`` itself if it is an inode, else the inode at that path."""
    return target if isinstance(target, int) else resolve(t, target)


def children(t: Txn, ino: int) -> Iterator[tuple[bytes, int, Any]]:
    """(name, inode, inode record) of every entry of directory ``ino`` that has an inode record."""
    for name, child in t.dirents(ino):
        rec = t.inode_get(child)
        if rec is not None:
            yield name, child, rec


def holds_files(t: Txn, ino: int) -> bool:
    """Whether directory ``ino`` has an entry that is not a directory."""
    return any(not stat.S_ISDIR(rec.mode) for _, _, rec in children(t, ino))


def enclosing_checkpoint(t: Txn, ino: int) -> int | None:
    """The nearest ancestor of ``ino`` that is a checkpoint."""
    while ino != ROOT_INODE:
        links = t.parents(ino)
        if not links:
            return None
        ino = links[0][0]
        if ino != ROOT_INODE and t.ckpt_key_of(ino) is not None:
            return ino
    return None
