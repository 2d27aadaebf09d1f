"""Typed access to the index databases inside one LMDB transaction.

Layers above the index see only this class: they read and write chunk
locations, packs, inodes, directory entries, manifests and xattrs as Python
values; the byte layouts stay in ``keys.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import lmdb

from chunkfs.index import keys
from chunkfs.types import ChunkId, ChunkLocation, Extent, InodeRecord, PackId, PackInfo


class Txn:
    """One open LMDB transaction (read-only or write) with typed helpers."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, lmdb._Database]) -> None:
        self._txn = txn
        self._dbs = dbs

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
        self._put("dirents", keys.dirent_key(parent, name), keys.u64(child))
        self._put("parents", keys.parent_key(child, parent, name), b"")

    def dirent_delete(self, parent: int, name: bytes) -> None:
        child = self.dirent_get(parent, name)
        self._delete("dirents", keys.dirent_key(parent, name))
        if child is not None:
            self._delete("parents", keys.parent_key(child, parent, name))

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
