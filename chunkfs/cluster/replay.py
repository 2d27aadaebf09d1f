"""Applying the shared log to this node's index: every other node's changes, in log order.

Each entry's pack and chunk locations are recorded first (home: the warm tier, where the
publisher put them before it wrote the entry), then its changes go through this node's
``Namespace`` like local ones, all in one transaction with the new log position — so history, the registry and the mount's view of "changed
elsewhere" (docs/concurrency.md) follow — but are not journaled again.

Replay never fails on what the tree looks like here; it follows the rules of
docs/multinode.md ("Replay rules"): a change whose object is gone, or whose name is taken,
is skipped; the parents of a new name are created when missing; and a change to a path
that this node changed itself and has not published yet does not replace the local state
(the local change comes later in the log, so it wins everywhere) — a remote content is
still recorded in the file's history, followed by the local content again.

An entry of this node's own (the publisher wrote it, then the node died before it noted
that) only drops the journal records it carries. gc and sweep entries (any node's, this
one's included) are applied by ``maintenance.py``; a ``keep`` change resurrects chunks, a
``relocate`` moves them to the packs their node re-encoded them into (maintenance.py).
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
from collections.abc import Callable
from dataclasses import dataclass

from chunkfs import clock
from chunkfs.cluster import entries, maintenance
from chunkfs.cluster.log import SharedLog, entry_name
from chunkfs.errors import (
    AlreadyExists,
    ConfigError,
    CorruptData,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NoAttribute,
    NotADirectory,
    NotEmpty,
    NotFound,
)
from chunkfs.namespace.journal import decode_extents
from chunkfs.namespace.tree import Namespace
from chunkfs.store.tiering.tiers import Tiers
from chunkfs.types import Extent

log = logging.getLogger(__name__)

SKIPPED = (AlreadyExists, InvalidArgument, IsADirectory, NameTooLong, NoAttribute, NotADirectory, NotEmpty, NotFound)
"""What the tree here may answer a replayed change with: the change is skipped (and logged)."""
NOT_OF_A_PATH = ("keep", "tag", "untag", "relocate")
"""Changes that do not change the object at their path (a local one does not hold remote ones back)."""


class Replayer:
    """Applies the log's entries after ``meta/cluster_applied`` to one node's index."""

    def __init__(
        self,
        tiers: Tiers,
        ns: Namespace,
        shared: SharedLog,
        node: str,
        sidecar: Callable[[bytes, list[Extent]], bytes | None],
    ) -> None:
        """``sidecar(name, extents)``: the content the registry wants at commit for a file of that
        name, or None."""
        self.tiers = tiers
        self.index = tiers.index
        self.ns = ns
        self.shared = shared
        self.node = node
        self.sidecar = sidecar
        self._start_checked = False

    def catch_up(self) -> int:
        """Apply every entry written so far; returns the last position applied."""
        with self.index.read() as t:
            applied = t.applied_get()
        if not self._start_checked:  # once: a member's position bounds every truncation after
            first = self.shared.first()
            if applied + 1 < first:
                raise CorruptData(
                    f"{self.shared.backend.url}: the shared log starts at entry {first}, and this node has "
                    f"applied only up to {applied} (a join without a usable metadata backup, or an index "
                    "older than the log); join again, on an empty directory, once the creating node has "
                    "uploaded a backup with nothing left to publish (`chunkfs sync` there)"
                )
            self._start_checked = True
        while (data := self.shared.read(applied + 1)) is not None:
            applied += 1
            entry = entries.decode(data, f"{self.shared.backend.url}/{entry_name(applied)}")
            if entry.kind == entries.GC:
                with self.index.write() as t:
                    maintenance.apply_gc(t, entry.body, applied)
                    t.applied_put(applied)
            elif entry.kind == entries.SWEEP:
                with self.index.write() as t:
                    maintenance.apply_sweep(t, entry.body)
                    t.applied_put(applied)
                maintenance.delete_empty_packs(self.tiers)
            elif entry.kind == entries.FORGET:
                self._forget(entry, applied)
            elif self._forgotten(entry.node):  # written after its node was removed: a fence
                log.warning("log entry %d of node %s ignored: that node was forgotten", applied, entry.node)
                with self.index.write() as t:
                    t.applied_put(applied)
            elif entry.node == self.node:  # published, then this node died before noting it
                first, last = entry.seqs
                with self.index.write() as t:
                    t.outbox_delete(list(range(first, last + 1)))
                    t.applied_put(applied)
            else:
                self._apply(entry, applied)
        return applied

    def _forget(self, entry: entries.Entry, position: int) -> None:
        """A member removed for good: its later entries are ignored everywhere (and if it is this
        node, it stops here: what it has not published can no longer be). Its packs become the
        forgetting node's: every chunk in them that anyone may read was published, so that
        node knows them as well as any, and its sweeps delete them once they are empty."""
        node = entry.body["node"]
        if node == self.node:
            raise ConfigError(
                f"{self.shared.backend.url}: this node ({node}) was removed from the shared repository "
                f"(`chunkfs forget-node`, log entry {position}); its unpublished changes cannot be published. "
                "Copy out what it holds (`chunkfs export`) and join again on an empty directory"
            )
        with self.index.write() as t:
            t.forgotten_put(node, entry.time_ns)
            for pack in t.foreign_packs(node):
                if entry.node == self.node:
                    t.foreign_delete(pack)  # adopted: this node's own now
                else:
                    t.foreign_put(pack, entry.node)
            t.applied_put(position)

    def _forgotten(self, node: str) -> bool:
        with self.index.read() as t:
            return node in t.forgotten()

    def _apply(self, entry: entries.Entry, position: int) -> None:
        """Record the entry's chunk locations, then apply its changes and note the position in
        one transaction (``Index.batch``): the mount never shows half an entry, and a crash
        leaves all of it or none. What needs reading chunks (registry sidecars; for a
        conflict, the local content) is read before, not while the index is held."""
        with self.index.write() as t:
            for pack, info in entry.packs.items():
                if t.pack_get(pack) is None:  # another node's (only it deletes the objects)
                    t.pack_put(pack, info)
                    t.foreign_put(pack, entry.node)
            relocates = [op for op in entry.ops if op["op"] == "relocate"]
            # a chunk only a relocate names is none of ours (decoded only then: contents name the rest)
            named = {bytes(e.chunk) for op in entry.ops if op["op"] == "content"
                     for e in decode_extents(op["extents"])} if relocates else None  # fmt: skip
            for chunk, loc in entry.chunks.items():
                if (named is None or chunk in named) and t.chunk_get(chunk) is None:
                    t.chunk_put(chunk, loc)
            for op in relocates:  # the node re-encoded or repacked packs: their chunks' new places
                maintenance.apply_relocate(t, op, entry.chunks)
            pending = _pending_paths([op for _, _, op in t.outbox()])
        ready = [self._prepare(op, pending) for op in entry.ops]
        with self.index.batch(), self.ns.journal.replaying():
            for op, prepared in zip(entry.ops, ready, strict=True):
                try:
                    self._op(op, pending, prepared)
                except SKIPPED as e:
                    log.info("log entry of node %s: %s of %s skipped here: %s", entry.node, op.get("op"), op.get("path"), e)
            with self.index.write() as t:
                t.applied_put(position)

    # -- one change ----------------------------------------------------------------------

    def _prepare(self, op: dict, pending: set[str]) -> _Content | None:
        """For a content: its sidecar, and in a conflict the local content to keep (read now)."""
        if op["op"] != "content":
            return None
        path = op["path"]
        extents = decode_extents(op["extents"])
        name = os.fsencode(posixpath.basename(path))
        local = None
        if path in pending:
            try:
                ino = self.ns.resolve(path)
                rec = self.ns.getattr(ino)
                with self.index.read() as t:
                    version = t.version_at(ino, t.last_commit())
                mine = self.ns.extents(ino)
                local = (rec, version, mine, self.sidecar(name, mine))
            except SKIPPED:  # gone here meanwhile: nothing local to keep
                local = None
        return _Content(extents, self.sidecar(name, extents), local)

    def _op(self, op: dict, pending: set[str], prepared: _Content | None) -> None:
        if op["op"] == "keep":  # a node still references these chunks, which a gc condemned
            with self.index.write() as t:
                t.resurrect([bytes.fromhex(c) for c in op["chunks"]])
            return
        if op["op"] in ("tag", "untag"):
            self._tag(op)
            return
        if op["op"] == "relocate":  # applied with the entry's locations (``_apply``)
            return
        kind, path = op["op"], op["path"]
        if kind == "content":
            self._content(op, path, prepared)
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

    def _content(self, op: dict, path: str, prepared: _Content) -> None:
        ns = self.ns
        ino = ns.resolve(path)
        rec = ns.getattr(ino)
        if stat.S_ISDIR(rec.mode):
            raise IsADirectory(f"{path}: is a directory here")
        if prepared.local is not None and rec.manifest != prepared.local[0].manifest:
            return  # changed here again since: that newer local content is published later
        ns.set_content(
            ino, prepared.extents, op["mtime_ns"], blake3=bytes.fromhex(op["blake3"]), writer_uid=op["writer_uid"],
            sidecar=prepared.sidecar,
        )  # fmt: skip
        if prepared.local is not None:  # keep the local content current; the remote one is in history
            rec, version, extents, sidecar = prepared.local
            ns.set_content(
                ino, extents, rec.mtime_ns, blake3=version.blake3 if version else None,
                writer_uid=version.writer_uid if version else None, sidecar=sidecar,
            )  # fmt: skip
            log.info("%s: content from another node kept in history; the local one, not yet published, stays", path)

    def _tag(self, op: dict) -> None:
        """A tag made on another node: here, of this node's state after the changes before it in
        the log (a name already taken here keeps its tag)."""
        with self.index.write() as t:
            if op["op"] == "untag":
                t.tag_delete(op["name"])
            elif t.tag_get(op["name"]) is None:
                t.tag_put(op["name"], t.last_commit(), clock.now_ns(), "" if op["whole"] else op["path"])
            else:
                log.info("tag %s from another node: the name is taken here; this node's tag stays", op["name"])

    def _parent(self, path: str, *, create: bool = False) -> tuple[int, bytes]:
        head, name = posixpath.split(path)
        parent = self.ns.makedirs(head, 0, 0) if create else self.ns.resolve(head)
        return parent, os.fsencode(name)


@dataclass
class _Content:
    """What replaying one content change needs read before the index is held."""

    extents: list[Extent]
    sidecar: bytes | None  # the content itself, when the registry reads it (trainer_state.json, …)
    local: tuple | None  # a conflict: this node's (record, version, extents, sidecar) to keep current


def _pending_paths(ops: list[dict]) -> set[str]:
    """Every path a not yet published local change names."""
    return {p for op in ops if op["op"] not in NOT_OF_A_PATH for p in (op.get("path"), op.get("to")) if p}
