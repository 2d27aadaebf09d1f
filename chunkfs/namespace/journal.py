"""The journal of a shared repository's namespace changes (docs/multinode.md).

In a repository shared by several nodes, every change of the tree made on this node is
also written, in the same LMDB transaction, as one record of the ``outbox``
(index/keys.py, "Cluster"): the publisher (``chunkfs.cluster``) sends them to the shared
log, and every other node replays them there. A change is described by *paths*, not
inode numbers — inode numbers are each node's own — at the moment it was made, so that
replaying the records in order rebuilds the same tree.

Paths come from ``namespace/paths.py``. Changes that a node makes while replaying another node's records are not journaled again
(``Journal.replaying``, per thread: the mount's own requests in other threads still are).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from chunkfs import clock
from chunkfs.index import Index, Txn
from chunkfs.types import Extent


def encode_extents(extents: list[Extent]) -> list[list]:
    return [[e.length, bytes(e.chunk).hex()] for e in extents]


def decode_extents(rows: list[list]) -> list[Extent]:
    return [Extent(int(length), bytes.fromhex(chunk)) for length, chunk in rows]


class Journal:
    """Writes change records into the outbox when the repository is shared (``enabled``: its
    index holds ``meta/cluster``; a repository becomes shared only when it is created)."""

    def __init__(self, index: Index) -> None:
        with index.read() as t:
            self.enabled = t.cluster_get() is not None
        self._local = threading.local()

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        """Changes made by this thread inside the block come from the log: not journaled."""
        self._local.replaying = True
        try:
            yield
        finally:
            self._local.replaying = False

    def record(self, t: Txn, op: str, path: str | None, **fields) -> None:
        """Journal change ``op`` of ``path`` (None: the object has no name — nothing to share)."""
        if not self.enabled or path is None or getattr(self._local, "replaying", False):
            return
        t.outbox_put(clock.now_ns(), {"op": op, "path": path, **fields})
