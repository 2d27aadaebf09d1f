"""The tree: ``inodes``, ``dirents``, ``parents``, ``manifests``, ``xattrs`` (keys.py, "Databases")."""

from __future__ import annotations

from collections.abc import Iterator

from chunkfs.index import keys
from chunkfs.index.tables.base import BaseTables
from chunkfs.types import Extent, InodeRecord


class TreeTables(BaseTables):
    """Inodes, directory entries and their reverse, manifests, extended attributes."""

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

    def dirents_all(self) -> Iterator[tuple[int, bytes, int]]:
        """(parent, name, child) of every directory entry."""
        for key, value in self._prefix("dirents", b""):
            yield keys.decode_u64(key[:8]), keys.dirent_name(key), keys.decode_u64(value)

    def parents_all(self) -> Iterator[tuple[int, int, bytes]]:
        """(child, parent, name) of every ``parents`` record."""
        for key, _ in self._prefix("parents", b""):
            yield (keys.decode_u64(key[:8]), *keys.decode_parent_key(key))

    def link_delete(self, parent: int, name: bytes, child: int) -> None:
        """Drop a directory entry and its reverse record without a history entry (repairs)."""
        self._delete("dirents", keys.dirent_key(parent, name))
        self._delete("parents", keys.parent_key(child, parent, name))

    def parent_put(self, child: int, parent: int, name: bytes) -> None:
        """Add a ``parents`` record alone (fsck's repair: ``parents`` is rebuilt from ``dirents``)."""
        self._put("parents", keys.parent_key(child, parent, name), b"")

    def parent_delete(self, child: int, parent: int, name: bytes) -> None:
        """Drop a ``parents`` record alone (fsck's repair)."""
        self._delete("parents", keys.parent_key(child, parent, name))

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
