"""Applying the shared log to this node's index: every other node's changes, in log order.

Each entry's pack and chunk locations are recorded first (home: the warm tier, where the
publisher put them before it wrote the entry), then its changes go through this node's
``Namespace`` like local ones — so history, the registry and the mount's view of "changed
elsewhere" (docs/concurrency.md) follow — but are not journaled again.

Replay never fails on what the tree looks like here; it follows the rules of
docs/multinode.md ("Replay rules"): a change whose object is gone, or whose name is taken,
is skipped; the parents of a new name are created when missing; and a change to a path
that this node changed itself and has not published yet does not replace the local state
(the local change comes later in the log, so it wins everywhere) — a remote content is
still recorded in the file's history, followed by the local content again.

An entry of this node's own (the publisher wrote it, then the node died before it noted
that) only drops the journal records it carries.
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
from collections.abc import Callable

from chunkfs.cluster import entries
from chunkfs.cluster.log import SharedLog, entry_name
from chunkfs.errors import (
    AlreadyExists,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NoAttribute,
    NotADirectory,
    NotEmpty,
    NotFound,
)
from chunkfs.index import Index
from chunkfs.namespace.journal import decode_extents
from chunkfs.namespace.tree import Namespace
from chunkfs.types import Extent

log = logging.getLogger(__name__)

SKIPPED = (AlreadyExists, InvalidArgument, IsADirectory, NameTooLong, NoAttribute, NotADirectory, NotEmpty, NotFound)
"""What the tree here may answer a replayed change with: the change is skipped (and logged)."""


class Replayer:
    """Applies the log's entries after ``meta/cluster_applied`` to one node's index."""

    def __init__(
        self,
        index: Index,
        ns: Namespace,
        shared: SharedLog,
        node: str,
        sidecar: Callable[[int, list[Extent]], bytes | None],
    ) -> None:
        """``sidecar(ino, extents)``: the content the registry wants at commit for that file, or None."""
        self.index = index
        self.ns = ns
        self.shared = shared
        self.node = node
        self.sidecar = sidecar
        self.skipped = 0  # changes the tree here did not allow (logged)

    def catch_up(self) -> int:
        """Apply every entry written so far; returns the last position applied."""
        with self.index.read() as t:
            applied = t.applied_get()
        while (data := self.shared.read(applied + 1)) is not None:
            entry = entries.decode(data, f"{self.shared.backend.url}/{entry_name(applied + 1)}")
            if entry.node != self.node:
                self._apply(entry)
            first, last = entry.seqs
            with self.index.write() as t:
                if entry.node == self.node:
                    t.outbox_delete(list(range(first, last + 1)))
                t.applied_put(applied + 1)
            applied += 1
        return applied

    def _apply(self, entry: entries.Entry) -> None:
        with self.index.write() as t:
            for pack, info in entry.packs.items():
                if t.pack_get(pack) is None:
                    t.pack_put(pack, info)
            for chunk, loc in entry.chunks.items():
                if t.chunk_get(chunk) is None:
                    t.chunk_put(chunk, loc)
        with self.index.read() as t:
            pending = _pending_paths([op for _, _, op in t.outbox()])
        with self.ns.journal.replaying():
            for op in entry.ops:
                try:
                    self._op(op, pending)
                except SKIPPED as e:
                    self.skipped += 1
                    log.info("log entry of node %s: %s of %s skipped here: %s", entry.node, op.get("op"), op.get("path"), e)

    # -- one change ----------------------------------------------------------------------

    def _op(self, op: dict, pending: set[str]) -> None:
        kind, path = op["op"], op["path"]
        if kind == "content":
            self._content(op, path, path in pending)
            return
        if path in pending or op.get("to") in pending:
            log.info("%s of %s: a local change not yet published comes later and wins", kind, path)
            return
        ns = self.ns
        if kind == "create":
            parent, name = self._parent(path, create=True)
            mode = op["mode"]
            if stat.S_ISDIR(mode):
                ns.mkdir(parent, name, mode, op["uid"], op["gid"])
            elif stat.S_ISLNK(mode):
                ns.symlink(parent, name, os.fsencode(op["target"]), op["uid"], op["gid"])
            else:
                ns.mknod(parent, name, mode, op["uid"], op["gid"], op["rdev"], versioned=op["versioned"])
        elif kind == "link":
            parent, name = self._parent(op["to"], create=True)
            ns.link(ns.resolve(path), parent, name)
        elif kind == "remove":
            parent, name = self._parent(path)
            _, rec = ns.lookup(parent, name)
            (ns.rmdir if stat.S_ISDIR(rec.mode) else ns.unlink)(parent, name)
        elif kind == "rename":
            old_parent, old = self._parent(path)
            new_parent, new = self._parent(op["to"], create=True)
            ns.rename(old_parent, old, new_parent, new, exchange=op["exchange"])
        elif kind == "setattr":
            fields = {k: op[k] for k in ("mode", "uid", "gid", "atime_ns", "mtime_ns") if op.get(k) is not None}
            ns.setattr(ns.resolve(path), **fields)
        elif kind == "setxattr":
            ns.setxattr(ns.resolve(path), os.fsencode(op["name"]), bytes.fromhex(op["value"]))
        elif kind == "removexattr":
            ns.removexattr(ns.resolve(path), os.fsencode(op["name"]))
        else:
            raise InvalidArgument(f"unknown change {kind!r} (written by a newer chunkfs?)")

    def _content(self, op: dict, path: str, conflict: bool) -> None:
        ns = self.ns
        ino = ns.resolve(path)
        if stat.S_ISDIR(ns.getattr(ino).mode):
            raise IsADirectory(f"{path}: is a directory here")
        mine = None
        if conflict:  # keep the local content current; the remote one goes into history only
            with self.index.read() as t:
                version = t.version_at(ino, t.last_commit())
            mine = (ns.extents(ino), version, ns.getattr(ino))
        extents = decode_extents(op["extents"])
        ns.set_content(
            ino, extents, op["mtime_ns"], blake3=bytes.fromhex(op["blake3"]), writer_uid=op["writer_uid"],
            sidecar=self.sidecar(ino, extents),
        )  # fmt: skip
        if mine is not None:
            extents, version, rec = mine
            ns.set_content(
                ino, extents, rec.mtime_ns, blake3=version.blake3 if version else None,
                writer_uid=version.writer_uid if version else None, sidecar=self.sidecar(ino, extents),
            )  # fmt: skip
            log.info("%s: content from another node kept in history; the local one, not yet published, stays", path)

    def _parent(self, path: str, *, create: bool = False) -> tuple[int, bytes]:
        head, name = posixpath.split(path)
        parent = self.ns.makedirs(head, 0, 0) if create else self.ns.resolve(head)
        return parent, os.fsencode(name)


def _pending_paths(ops: list[dict]) -> set[str]:
    """Every path a not yet published local change names."""
    return {p for op in ops for p in (op.get("path"), op.get("to")) if p}
