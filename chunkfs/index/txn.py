"""Typed access to the index databases inside one LMDB transaction.

Layers above the index see only this class: they read and write chunk
locations, packs, inodes, directory entries, manifests and xattrs as Python
values; the byte layouts stay in ``keys.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import lmdb

from chunkfs import clock
from chunkfs.index import keys
from chunkfs.types import ChunkId, ChunkLocation, Extent, InodeRecord, PackId, PackInfo, Tier, Version


class RunRecord(NamedTuple):
    """Lifecycle state of one run (``runs`` in keys.py)."""

    completed_ns: int = 0  # 0: not marked complete
    last_read_ns: int = 0  # 0: never read from warm/cold
    held: Tier | None = None  # a tier the policy must not move the run from


class Txn:
    """One open LMDB transaction (read-only or write) with typed helpers."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, lmdb._Database]) -> None:
        self._txn = txn
        self._dbs = dbs
        self._commit: int | None = None

    @property
    def commit(self) -> int:
        """This transaction's commit number, allocated on first use.

        Every change of a directory entry and every new inode version made in
        one transaction shares it: a rename is one commit, not two.
        """
        if self._commit is None:
            self._commit = self.next_commit(clock.now_ns())
        return self._commit

    def _get(self, db: str, key: bytes) -> bytes | None:
        return self._txn.get(key, db=self._dbs[db])

    def _put(self, db: str, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._dbs[db])

    def _delete(self, db: str, key: bytes) -> bool:
        return self._txn.delete(key, db=self._dbs[db])

    def _prefix(self, db: str, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        cursor = self._txn.cursor(db=self._dbs[db])
        if not cursor.set_range(prefix):
            return
        for key, value in cursor:
            if not key.startswith(prefix):
                return
            yield key, value

    # -- meta and counters ----------------------------------------------------

    def meta_get(self, name: bytes) -> bytes | None:
        return self._get("meta", name)

    def meta_put(self, name: bytes, value: bytes) -> None:
        self._put("meta", name, value)

    def _next(self, name: bytes) -> int:
        n = keys.decode_u64(self._get("meta", name))
        self._put("meta", name, keys.u64(n + 1))
        return n

    def next_inode(self) -> int:
        return self._next(keys.META_NEXT_INODE)

    def next_manifest(self) -> int:
        return self._next(keys.META_NEXT_MANIFEST)

    # -- chunks -----------------------------------------------------------------

    def chunk_get(self, chunk: ChunkId) -> ChunkLocation | None:
        raw = self._get("chunks", chunk)
        return keys.decode_location(raw) if raw is not None else None

    def chunk_put(self, chunk: ChunkId, loc: ChunkLocation) -> None:
        self._put("chunks", chunk, keys.encode_location(loc))

    def chunk_delete(self, chunk: ChunkId) -> bool:
        return self._delete("chunks", chunk)

    def chunks(self) -> Iterator[tuple[ChunkId, ChunkLocation]]:
        for key, value in self._prefix("chunks", b""):
            yield key, keys.decode_location(value)

    def chunk_count(self) -> int:
        return self._txn.stat(self._dbs["chunks"])["entries"]

    # -- packs ------------------------------------------------------------------

    def pack_get(self, pack: PackId) -> PackInfo | None:
        raw = self._get("packs", pack)
        return keys.decode_pack(raw) if raw is not None else None

    def pack_put(self, pack: PackId, info: PackInfo) -> None:
        self._put("packs", pack, keys.encode_pack(info))

    def pack_delete(self, pack: PackId) -> bool:
        return self._delete("packs", pack)

    def packs(self) -> Iterator[tuple[PackId, PackInfo]]:
        for key, value in self._prefix("packs", b""):
            yield key, keys.decode_pack(value)

    # -- inodes -----------------------------------------------------------------

    def inode_get(self, ino: int) -> InodeRecord | None:
        raw = self._get("inodes", keys.u64(ino))
        if raw is None:
            return None
        fields, target = keys.decode_inode(raw)
        return InodeRecord(*fields, target=target)

    def inode_put(self, ino: int, rec: InodeRecord) -> None:
        fields = (
            rec.mode, rec.uid, rec.gid, rec.nlink, rec.size,
            rec.atime_ns, rec.mtime_ns, rec.ctime_ns, rec.rdev, rec.manifest,
        )  # fmt: skip
        self._put("inodes", keys.u64(ino), keys.encode_inode(fields, rec.target))

    def inode_delete(self, ino: int) -> None:
        self._delete("inodes", keys.u64(ino))

    def inode_count(self) -> int:
        return self._txn.stat(self._dbs["inodes"])["entries"]

    def inodes(self) -> Iterator[tuple[int, InodeRecord]]:
        for key, _ in self._prefix("inodes", b""):
            ino = keys.decode_u64(key)
            yield ino, self.inode_get(ino)

    # -- directory entries --------------------------------------------------------

    def dirent_get(self, parent: int, name: bytes) -> int | None:
        raw = self._get("dirents", keys.dirent_key(parent, name))
        return keys.decode_u64(raw) if raw is not None else None

    def dirent_put(self, parent: int, name: bytes, child: int) -> None:
        """Link ``name`` in ``parent`` to ``child``; recorded in the history under ``commit``."""
        self._put("dirents", keys.dirent_key(parent, name), keys.u64(child))
        self._put("parents", keys.parent_key(child, parent, name), b"")
        self.dirhist_put(parent, name, self.commit, child)

    def dirent_delete(self, parent: int, name: bytes) -> None:
        """Unlink ``name`` from ``parent``; the history keeps a removal marker."""
        child = self.dirent_get(parent, name)
        self._delete("dirents", keys.dirent_key(parent, name))
        if child is not None:
            self._delete("parents", keys.parent_key(child, parent, name))
            self.dirhist_put(parent, name, self.commit, 0)

    def dirents(self, parent: int, after: bytes | None = None) -> Iterator[tuple[bytes, int]]:
        """Entries of a directory in name order, starting after name ``after``."""
        prefix = keys.u64(parent)
        cursor = self._txn.cursor(db=self._dbs["dirents"])
        start = keys.dirent_key(parent, after) if after is not None else prefix
        if not cursor.set_range(start):
            return
        for key, value in cursor:
            if not key.startswith(prefix):
                return
            name = keys.dirent_name(key)
            if name == after:
                continue
            yield name, keys.decode_u64(value)

    def has_dirents(self, parent: int) -> bool:
        return next(self.dirents(parent), None) is not None

    def parents(self, child: int) -> list[tuple[int, bytes]]:
        """Every (parent inode, name) under which ``child`` is linked."""
        return [keys.decode_parent_key(k) for k, _ in self._prefix("parents", keys.u64(child))]

    # -- manifests ----------------------------------------------------------------

    def manifest_get(self, mid: int) -> list[Extent] | None:
        raw = self._get("manifests", keys.u64(mid))
        return keys.decode_manifest(raw) if raw is not None else None

    def manifest_put(self, extents: list[Extent]) -> int:
        self.resurrect(e.chunk for e in extents)  # gc protocol (docs/gc.md): never commit a condemned chunk
        mid = self.next_manifest()
        self._put("manifests", keys.u64(mid), keys.encode_manifest(extents))
        return mid

    def manifest_delete(self, mid: int) -> None:
        self._delete("manifests", keys.u64(mid))

    def manifests(self) -> Iterator[tuple[int, list[Extent]]]:
        for key, value in self._prefix("manifests", b""):
            yield keys.decode_u64(key), keys.decode_manifest(value)

    # -- extended attributes --------------------------------------------------------

    def xattr_get(self, ino: int, name: bytes) -> bytes | None:
        return self._get("xattrs", keys.xattr_key(ino, name))

    def xattr_put(self, ino: int, name: bytes, value: bytes) -> None:
        self._put("xattrs", keys.xattr_key(ino, name), value)

    def xattr_delete(self, ino: int, name: bytes) -> bool:
        return self._delete("xattrs", keys.xattr_key(ino, name))

    def xattrs(self, ino: int) -> list[bytes]:
        return [bytes(k[8:]) for k, _ in self._prefix("xattrs", keys.u64(ino))]

    # -- rebuilding -----------------------------------------------------------------

    def clear_chunk_index(self) -> None:
        """Empty the chunks and packs databases (``chunkfs index rebuild`` refills them)."""
        self._txn.drop(self._dbs["chunks"], delete=False)
        self._txn.drop(self._dbs["packs"], delete=False)

    # -- history: commits, directory entries and inode versions over time ---------------

    def next_commit(self, now_ns: int) -> int:
        """A new commit number, stamped with ``now_ns`` (never earlier than the last one)."""
        raw = self._get("meta", keys.META_NEXT_COMMIT)
        commit = keys.decode_u64(raw) if raw is not None else 1
        self._put("meta", keys.META_NEXT_COMMIT, keys.u64(commit + 1))
        if commit > 1:
            now_ns = max(now_ns, self.commit_time(commit - 1) or 0)
        self._put("commits", keys.u64(commit), keys.encode_commit_time(now_ns))
        return commit

    def last_commit(self) -> int:
        """The newest commit number (0 before the first change)."""
        raw = self._get("meta", keys.META_NEXT_COMMIT)
        return keys.decode_u64(raw) - 1 if raw is not None else 0

    def commit_time(self, commit: int) -> int | None:
        raw = self._get("commits", keys.u64(commit))
        return keys.decode_commit_time(raw) if raw is not None else None

    def commit_at_time(self, ns: int) -> int:
        """The newest commit made at or before ``ns`` (0 if none): binary search, times are monotonic."""
        lo, hi = 0, self.last_commit()
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if (self.commit_time(mid) or 0) <= ns:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def dirhist_put(self, parent: int, name: bytes, commit: int, child: int) -> None:
        """Record that at ``commit`` entry ``name`` of ``parent`` became ``child`` (0: removed)."""
        self._put("dirhist", keys.dirhist_key(parent, name, commit), keys.u64(child))

    def dirent_at(self, parent: int, name: bytes, commit: int) -> int | None:
        """The inode named ``name`` in ``parent`` as of ``commit`` (None: there was none)."""
        cursor = self._txn.cursor(db=self._dbs["dirhist"])
        prefix = keys.dirhist_prefix(parent, name)
        if not cursor.set_range(keys.dirhist_key(parent, name, commit)):
            return None
        key = cursor.key()
        if not key.startswith(prefix) or len(key) != len(prefix) + 8:
            return None
        child = keys.decode_u64(cursor.value())
        return child or None

    def dirents_at(self, parent: int, commit: int) -> list[tuple[bytes, int]]:
        """A directory's entries as of ``commit``, in name order."""
        out = []
        for name in self.dirhist_names(parent):
            child = self.dirent_at(parent, name, commit)
            if child:
                out.append((name, child))
        return out

    def dirhist_names(self, parent: int) -> list[bytes]:
        """Every name that was ever an entry of ``parent``, in name order."""
        names = []
        cursor = self._txn.cursor(db=self._dbs["dirhist"])
        prefix = keys.u64(parent)
        found = cursor.set_range(prefix)
        while found and cursor.key().startswith(prefix):
            _, name, _ = keys.decode_dirhist_key(cursor.key())
            names.append(name)
            found = cursor.set_range(keys.dirhist_prefix(parent, name)[:-1] + b"\x01")
        return names

    def dirhist(self, parent: int, name: bytes) -> list[tuple[int, int]]:
        """Every (commit, child or 0) of one directory entry, newest first."""
        return [
            (keys.decode_dirhist_key(k)[2], keys.decode_u64(v))
            for k, v in self._prefix("dirhist", keys.dirhist_prefix(parent, name))
            if len(k) == len(keys.dirhist_prefix(parent, name)) + 8
        ]

    def version_put(self, ino: int, commit: int, rec: InodeRecord, blake: bytes, writer_uid: int) -> None:
        fields = (
            rec.mode, rec.uid, rec.gid, rec.nlink, rec.size,
            rec.atime_ns, rec.mtime_ns, rec.ctime_ns, rec.rdev, rec.manifest,
        )  # fmt: skip
        self._put("inohist", keys.inohist_key(ino, commit), keys.encode_version(blake, writer_uid, fields, rec.target))

    def _version(self, key: bytes, value: bytes) -> Version:
        blake, uid, fields, target = keys.decode_version(value)
        ino = keys.decode_u64(key[:8])
        return Version(ino, keys.decode_inohist_commit(key), InodeRecord(*fields, target=target), blake, uid)

    def version_at(self, ino: int, commit: int) -> Version | None:
        """The newest version of ``ino`` at or before ``commit``."""
        cursor = self._txn.cursor(db=self._dbs["inohist"])
        if not cursor.set_range(keys.inohist_key(ino, commit)):
            return None
        key = cursor.key()
        if key[:8] != keys.u64(ino):
            return None
        return self._version(key, cursor.value())

    def versions(self, ino: int) -> list[Version]:
        """Every version of ``ino``, newest first."""
        return [self._version(k, v) for k, v in self._prefix("inohist", keys.u64(ino))]

    # -- tags ---------------------------------------------------------------------------

    def tag_get(self, name: str) -> tuple[int, int, str] | None:
        """(commit, created ns, path) of a tag."""
        raw = self._get("tags", name.encode())
        return keys.decode_tag(raw) if raw is not None else None

    def tag_put(self, name: str, commit: int, created_ns: int, path: str) -> None:
        self._put("tags", name.encode(), keys.encode_tag(commit, created_ns, path))

    def tag_delete(self, name: str) -> bool:
        return self._delete("tags", name.encode())

    def tags(self) -> list[tuple[str, int, int, str]]:
        return [(k.decode(), *keys.decode_tag(v)) for k, v in self._prefix("tags", b"")]

    # -- checkpoint registry (namespace/registry/; keys.py "Registry") ----------------

    def ckpt_key_of(self, ino: int) -> tuple[tuple[str, ...], int] | None:
        """(fields, step) of directory ``ino``'s checkpoint record, or None."""
        raw = self._get("ckpt_ino", keys.u64(ino))
        if raw is None:
            return None
        fields, step, _ = keys.decode_ckpt_key(raw)
        return fields, step

    def ckpt_get(self, ino: int) -> tuple[tuple[str, ...], int, int, int, float | None, dict] | None:
        """(fields, step, commit, time ns, metric, document) of ``ino``'s record, or None."""
        key = self._get("ckpt_ino", keys.u64(ino))
        if key is None:
            return None
        raw = self._get("ckpts", key)
        if raw is None:
            return None
        fields, step, _ = keys.decode_ckpt_key(key)
        return (fields, step, *keys.decode_ckpt(raw))

    def ckpt_record(self, fields, step: int, ino: int) -> tuple[int, int, float | None, dict] | None:
        """(commit, time ns, metric, document) of the record under (fields, step, ino)."""
        raw = self._get("ckpts", keys.ckpt_key(fields, step, ino))
        return keys.decode_ckpt(raw) if raw is not None else None

    def ckpt_put(self, ino: int, fields, step: int, commit: int, time_ns: int, metric, doc: dict) -> None:
        """Create or replace (and re-key, if fields or step changed) ``ino``'s record."""
        self.ckpt_delete(ino)
        key = keys.ckpt_key(fields, step, ino)
        self._put("ckpts", key, keys.encode_ckpt(commit, time_ns, metric, doc))
        self._put("ckpt_ino", keys.u64(ino), key)
        self._put("ckpt_run", keys.ckpt_run_key(fields, step, ino), b"")
        if metric is not None:
            self._put("ckpt_metric", keys.ckpt_metric_key(fields, metric, step, ino), b"")

    def ckpt_delete(self, ino: int) -> bool:
        """Drop ``ino``'s record and its index entries; False if it had none."""
        key = self._get("ckpt_ino", keys.u64(ino))
        if key is None:
            return False
        fields, step, _ = keys.decode_ckpt_key(key)
        raw = self._get("ckpts", key)
        if raw is not None:
            metric = keys.decode_ckpt_head(raw)[2]
            if metric is not None:
                self._delete("ckpt_metric", keys.ckpt_metric_key(fields, metric, step, ino))
            self._delete("ckpts", key)
        self._delete("ckpt_run", keys.ckpt_run_key(fields, step, ino))
        self._delete("ckpt_ino", keys.u64(ino))
        return True

    def ckpt_count(self) -> int:
        return self._txn.stat(self._dbs["ckpts"])["entries"]

    def ckpt_scan(self, fields=(), *, open_last: bool = False) -> Iterator[tuple[tuple[str, ...], int, int]]:
        """(fields, step, inode) of every record under a fields prefix, in key order."""
        for key, _ in self._prefix("ckpts", keys.ckpt_prefix(fields, open_last)):
            yield keys.decode_ckpt_key(key)

    def ckpt_rows(self, fields=(), *, open_last: bool = False):
        """(fields, step, inode, commit, time ns, metric, document) of every record under a
        fields prefix, in key order: one pass, for queries that read every record."""
        for key, value in self._prefix("ckpts", keys.ckpt_prefix(fields, open_last)):
            yield (*keys.decode_ckpt_key(key), *keys.decode_ckpt(value))

    def ckpt_run_scan(self, run: str) -> Iterator[tuple[tuple[str, ...], int, int]]:
        """(fields, step, inode) of every record whose last level is ``run``."""
        for key, _ in self._prefix("ckpt_run", keys.ckpt_run_prefix(run)):
            yield keys.decode_ckpt_run_key(key)

    def _groups(self, db: str, prefix: bytes, trailer: int) -> Iterator[bytes]:
        """The first key of each group under ``prefix``, seeking from group to group."""
        cursor = self._txn.cursor(db=self._dbs[db])
        found = cursor.set_range(prefix)
        while found:
            key = cursor.key()
            if not key.startswith(prefix):
                return
            yield key
            found = cursor.set_range(keys.ckpt_group_end(key, trailer))

    def ckpt_groups(self, fields=(), *, open_last: bool = False) -> Iterator[tuple[str, ...]]:
        """The distinct full field tuples (runs) under a fields prefix, one seek each."""
        for key in self._groups("ckpts", keys.ckpt_prefix(fields, open_last), keys.CKPT_TRAILER):
            yield keys.decode_ckpt_fields(key)

    def ckpt_run_groups(self, run: str) -> Iterator[tuple[str, ...]]:
        """The distinct full field tuples whose last level is ``run``."""
        for key in self._groups("ckpt_run", keys.ckpt_run_prefix(run), keys.CKPT_TRAILER):
            rotated = keys.decode_ckpt_fields(key)
            yield (*rotated[1:], rotated[0])

    def ckpt_newest(self, group) -> list[tuple[int, int, int, int]]:
        """(step, inode, commit, time ns) of every record at the highest step of one group."""
        prefix = keys.ckpt_prefix(group)
        cursor = self._txn.cursor(db=self._dbs["ckpts"])
        found = cursor.prev() if cursor.set_range(prefix[:-1] + b"\x01") else cursor.last()
        out: list[tuple[int, int, int, int]] = []
        while found:
            key = cursor.key()
            if not key.startswith(prefix) or len(key) != len(prefix) + keys.CKPT_TRAILER:
                break
            _, step, ino = keys.decode_ckpt_key(key)
            if out and step != out[0][0]:
                break
            commit, time_ns, _ = keys.decode_ckpt_head(cursor.value())
            out.append((step, ino, commit, time_ns))
            found = cursor.prev()
        return out

    def ckpt_at_step(self, group, step: int) -> list[int]:
        """Inodes of the records of one group at ``step``."""
        prefix = keys.ckpt_prefix(group) + keys.u64(step)
        rows = self._prefix("ckpts", prefix)
        return [keys.decode_u64(k[-8:]) for k, _ in rows if len(k) == len(prefix) + 8]

    def ckpt_metric_end(self, group, *, largest: bool) -> tuple[float, int, int] | None:
        """(metric, step, inode) of the smallest (or largest) indexed metric of one group;
        among equal metrics, the one with the highest step."""
        prefix = keys.ckpt_prefix(group)
        size = len(prefix) + keys.CKPT_METRIC_TRAILER
        cursor = self._txn.cursor(db=self._dbs["ckpt_metric"])
        if largest:
            found = cursor.prev() if cursor.set_range(prefix[:-1] + b"\x01") else cursor.last()
        else:
            found = cursor.set_range(prefix)
        if not found:
            return None
        key = cursor.key()
        if not key.startswith(prefix) or len(key) != size:
            return None
        if not largest:  # equal metrics sort by step: the last of them
            metric_bytes = key[len(prefix) : len(prefix) + 8]
            while cursor.next():
                nxt = cursor.key()
                same = len(nxt) == size and nxt.startswith(prefix)
                if not same or nxt[len(prefix) : len(prefix) + 8] != metric_bytes:
                    break
                key = nxt
        _, metric, step, ino = keys.decode_ckpt_metric_key(key)
        return metric, step, ino

    def ckpt_all(self) -> Iterator[tuple[int, tuple[str, ...], int, int, int, float | None, dict]]:
        """(inode, fields, step, commit, time ns, metric, document) of every record."""
        for key, value in self._prefix("ckpts", b""):
            fields, step, ino = keys.decode_ckpt_key(key)
            yield (ino, fields, step, *keys.decode_ckpt(value))

    def ckpt_clear(self) -> None:
        """Empty every registry database (a rebuild refills them)."""
        for db in ("ckpts", "ckpt_ino", "ckpt_run", "ckpt_metric"):
            self._txn.drop(self._dbs[db], delete=False)

    def registry_settings(self) -> dict | None:
        """The settings the registry databases were built with (None: not recorded)."""
        raw = self._get("meta", keys.META_REGISTRY)
        return keys.decode_registry_settings(raw) if raw is not None else None

    def registry_settings_put(self, settings: dict) -> None:
        self._put("meta", keys.META_REGISTRY, keys.encode_registry_settings(settings))

    # -- tiers: write-back queue, copies, moves in flight, runs, pins, counters ---------

    def upload_put(self, pack: PackId, queued_ns: int) -> None:
        self._put("uploads", pack, keys.encode_i64(queued_ns))

    def upload_delete(self, pack: PackId) -> bool:
        return self._delete("uploads", pack)

    def upload_get(self, pack: PackId) -> int | None:
        raw = self._get("uploads", pack)
        return keys.decode_i64(raw) if raw is not None else None

    def uploads(self) -> Iterator[tuple[PackId, int]]:
        """(pack, queued ns) of every queued upload, in pack id order."""
        for key, value in self._prefix("uploads", b""):
            yield bytes(key), keys.decode_i64(value)

    def copy_put(self, pack: PackId, tier: Tier, verified_ns: int, digest: bytes) -> None:
        self._put("copies", keys.pack_tier_key(pack, tier), keys.encode_copy(verified_ns, digest))

    def copy_get(self, pack: PackId, tier: Tier) -> tuple[int, bytes] | None:
        """(verified ns, BLAKE3 of the pack) of a copy, or None."""
        raw = self._get("copies", keys.pack_tier_key(pack, tier))
        return keys.decode_copy(raw) if raw is not None else None

    def copy_delete(self, pack: PackId, tier: Tier) -> bool:
        return self._delete("copies", keys.pack_tier_key(pack, tier))

    def copies_of(self, pack: PackId) -> list[tuple[Tier, int, bytes]]:
        """(tier, verified ns, digest) of every extra copy of ``pack``."""
        return [
            (keys.decode_pack_tier_key(k)[1], *keys.decode_copy(v)) for k, v in self._prefix("copies", bytes(pack))
        ]

    def copies(self) -> Iterator[tuple[PackId, Tier, int, bytes]]:
        for key, value in self._prefix("copies", b""):
            yield (*keys.decode_pack_tier_key(key), *keys.decode_copy(value))

    def move_put(self, pack: PackId, tier: Tier, kind: int, started_ns: int) -> None:
        self._put("moves", keys.pack_tier_key(pack, tier), keys.encode_move(kind, started_ns))

    def move_delete(self, pack: PackId, tier: Tier) -> bool:
        return self._delete("moves", keys.pack_tier_key(pack, tier))

    def moves(self) -> Iterator[tuple[PackId, Tier, int, int]]:
        """(pack, tier, kind, started ns) of every tier operation in flight."""
        for key, value in self._prefix("moves", b""):
            yield (*keys.decode_pack_tier_key(key), *keys.decode_move(value))

    def run_get(self, group: str) -> RunRecord:
        raw = self._get("runs", keys.group_key(group))
        if raw is None:
            return RunRecord()
        completed, last_read, held = keys.decode_run(raw)
        return RunRecord(completed, last_read, None if held == keys.NO_TIER else Tier(held))

    def run_put(self, group: str, rec: RunRecord) -> None:
        held = keys.NO_TIER if rec.held is None else int(rec.held)
        self._put("runs", keys.group_key(group), keys.encode_run(rec.completed_ns, rec.last_read_ns, held))

    def runs(self) -> Iterator[tuple[str, RunRecord]]:
        for key, _ in self._prefix("runs", b""):
            group = keys.decode_group_key(key)
            yield group, self.run_get(group)

    def pin_put(self, path: str, pinned_ns: int, chunks: list[ChunkId]) -> None:
        self._put("pins", keys.group_key(path), keys.encode_pin(pinned_ns, chunks))

    def pin_delete(self, path: str) -> bool:
        return self._delete("pins", keys.group_key(path))

    def pins(self) -> Iterator[tuple[str, int, list[ChunkId]]]:
        """(path, pinned ns, chunk ids) of every pin."""
        for key, value in self._prefix("pins", b""):
            yield (keys.decode_group_key(key), *keys.decode_pin(value))

    def counters_add(self, deltas: dict[str, int]) -> None:
        for name, delta in deltas.items():
            if delta:
                raw = self._get("counters", name.encode())
                total = keys.decode_u64(raw) if raw is not None else 0
                self._put("counters", name.encode(), keys.u64(max(0, total + delta)))

    def counters(self) -> dict[str, int]:
        return {bytes(k).decode(): keys.decode_u64(v) for k, v in self._prefix("counters", b"")}

    def upload_error(self) -> tuple[int, str] | None:
        raw = self._get("meta", keys.META_UPLOAD_ERROR)
        return keys.decode_upload_error(raw) if raw is not None else None

    def upload_error_put(self, time_ns: int, message: str | None) -> None:
        if message is None:
            self._delete("meta", keys.META_UPLOAD_ERROR)
        else:
            self._put("meta", keys.META_UPLOAD_ERROR, keys.encode_upload_error(time_ns, message))

    # -- operations: replicas, drills, metadata backups (keys.py "Operations") ---------------

    def replica_put(self, pack: PackId, rid: bytes, verified_ns: int, size: int, digest: bytes) -> None:
        self._put("replicas", keys.replica_key(pack, rid), keys.encode_replica(verified_ns, size, digest))

    def replica_get(self, pack: PackId, rid: bytes) -> tuple[int, int, bytes] | None:
        """(verified ns, size, BLAKE3) of a pack's copy on replica ``rid``, or None."""
        raw = self._get("replicas", keys.replica_key(pack, rid))
        return keys.decode_replica(raw) if raw is not None else None

    def replica_delete(self, pack: PackId, rid: bytes) -> bool:
        return self._delete("replicas", keys.replica_key(pack, rid))

    def replicas(self) -> Iterator[tuple[PackId, bytes, int, int, bytes]]:
        """(pack, replica id, verified ns, size, BLAKE3) of every replica copy."""
        for key, value in self._prefix("replicas", b""):
            yield (*keys.decode_replica_key(key), *keys.decode_replica(value))

    def replicas_of(self, pack: PackId) -> list[bytes]:
        """Replica ids holding a verified copy of ``pack``."""
        return [keys.decode_replica_key(k)[1] for k, _ in self._prefix("replicas", bytes(pack))]

    def drill_put(self, started_ns: int, doc: dict) -> None:
        self._put("drills", keys.u64(started_ns), keys.encode_drill(doc))

    def drills(self) -> list[tuple[int, dict]]:
        return [(keys.decode_u64(k), keys.decode_drill(v)) for k, v in self._prefix("drills", b"")]

    def backup_get(self) -> tuple[int, int, int] | None:
        """(generation, time ns, LMDB txn id) of the last metadata backup, or None."""
        raw = self._get("meta", keys.META_BACKUP)
        return keys.decode_backup(raw) if raw is not None else None

    def backup_put(self, generation: int, time_ns: int, txnid: int) -> None:
        self._put("meta", keys.META_BACKUP, keys.encode_backup(generation, time_ns, txnid))

    def clear_upload_queue(self) -> None:
        """Empty ``uploads`` and ``moves`` (disaster recovery: the hot tier they describe is gone)."""
        self._txn.drop(self._dbs["uploads"], delete=False)
        self._txn.drop(self._dbs["moves"], delete=False)


    # -- garbage collection (docs/gc.md; keys.py "Garbage collection") -----------------------

    def gc_epoch(self) -> int:
        raw = self._get("meta", keys.META_GC_EPOCH)
        return keys.decode_u64(raw) if raw is not None else 0

    def gc_epoch_bump(self) -> int:
        """The next gc epoch (the caller condemns chunks under it in this transaction)."""
        epoch = self.gc_epoch() + 1
        self._put("meta", keys.META_GC_EPOCH, keys.u64(epoch))
        return epoch

    def condemn(self, chunk: ChunkId, loc: ChunkLocation, epoch: int, now_ns: int) -> None:
        """Take ``chunk`` out of ``chunks`` (dedup stops matching it); its bytes stay where they are."""
        self._delete("chunks", chunk)
        self._put("condemned", chunk, keys.encode_condemned(epoch, now_ns, loc))

    def condemned_get(self, chunk: ChunkId) -> tuple[int, int, ChunkLocation] | None:
        raw = self._get("condemned", chunk)
        return keys.decode_condemned(raw) if raw is not None else None

    def condemned_delete(self, chunk: ChunkId) -> bool:
        return self._delete("condemned", chunk)

    def condemned(self) -> Iterator[tuple[ChunkId, int, int, ChunkLocation]]:
        """(chunk, epoch, condemned ns, location) of every condemned chunk."""
        for key, value in self._prefix("condemned", b""):
            yield (bytes(key), *keys.decode_condemned(value))

    def condemned_count(self) -> int:
        return self._txn.stat(self._dbs["condemned"])["entries"]

    def resurrect(self, chunks) -> int:
        """Move every condemned chunk of ``chunks`` back into ``chunks``; return how many.

        Called by every commit of a manifest and by writer flushes: a chunk a
        writer located before gc condemned it becomes live again while its
        bytes still exist (gc deletes them only after the writer's lease moved on).
        """
        n = 0
        condemned = self._dbs["condemned"]
        if not self._txn.stat(condemned)["entries"]:
            return 0
        for chunk in chunks:
            raw = self._get("condemned", chunk)
            if raw is None or self._get("chunks", chunk) is not None:
                continue
            _, _, loc = keys.decode_condemned(raw)
            self._put("chunks", chunk, keys.encode_location(loc))
            self._delete("condemned", chunk)
            n += 1
        return n

    def lease_put(self, lease: bytes, pid: int, floor: int, heartbeat_ns: int, host: str) -> None:
        self._put("gc_leases", lease, keys.encode_lease(pid, floor, heartbeat_ns, host))

    def lease_delete(self, lease: bytes) -> bool:
        return self._delete("gc_leases", lease)

    def leases(self) -> Iterator[tuple[bytes, int, int, int, str]]:
        """(lease id, pid, floor epoch, heartbeat ns, host) of every writer lease."""
        for key, value in self._prefix("gc_leases", b""):
            yield (bytes(key), *keys.decode_lease(value))

    def all_versions(self) -> Iterator[Version]:
        """Every version of every inode (``inohist`` in key order: by inode, newest first)."""
        for key, value in self._prefix("inohist", b""):
            yield self._version(key, value)

    def dirhist_all(self) -> Iterator[tuple[int, bytes, int, int]]:
        """(parent, name, commit, child or 0) of every ``dirhist`` entry (fsck names lost files)."""
        for key, value in self._prefix("dirhist", b""):
            parent, name, commit = keys.decode_dirhist_key(key)
            yield parent, name, commit, keys.decode_u64(value)

    def inohist_all(self) -> Iterator[Version]:
        """Every version of every inode (gc's mark phase), by inode, newest first."""
        for key, value in self._prefix("inohist", b""):
            yield self._version(key, value)

    def version_delete(self, ino: int, commit: int) -> bool:
        """Drop one version (gc, when no retention rule keeps it)."""
        return self._delete("inohist", keys.inohist_key(ino, commit))

    def dirhist_all(self) -> Iterator[tuple[int, bytes, int, int]]:
        """(parent, name, commit, child or 0) of every directory-entry change."""
        for key, value in self._prefix("dirhist", b""):
            yield (*keys.decode_dirhist_key(key), keys.decode_u64(value))

    def dirhist_delete(self, parent: int, name: bytes, commit: int) -> bool:
        return self._delete("dirhist", keys.dirhist_key(parent, name, commit))

    def gc_state_clear(self) -> None:
        """Drop every writer lease and condemned entry (``index rebuild`` refills ``chunks`` from the
        packs, so nothing is condemned any more; a recovered repository has no live writer)."""
        self._txn.drop(self._dbs["gc_leases"], delete=False)
        self._txn.drop(self._dbs["condemned"], delete=False)
