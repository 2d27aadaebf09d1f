"""History: ``commits``, ``dirhist``, ``inohist``, ``tags`` (keys.py, "History")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from chunkfs.index import keys
from chunkfs.index.tables.base import BaseTables
from chunkfs.types import InodeRecord, Version


class Tag(NamedTuple):
    """A tag (``tags``): a commit pinned under a name, for a path ('' : the whole tree)."""

    name: str
    commit: int
    created_ns: int
    path: str


class HistoryTables(BaseTables):
    """Commits, the history of directory entries and inodes, tags."""

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


    # -- tags ---------------------------------------------------------------------------

    def tag_get(self, name: str) -> tuple[int, int, str] | None:
        """(commit, created ns, path) of a tag."""
        raw = self._get("tags", name.encode())
        return keys.decode_tag(raw) if raw is not None else None

    def tag_put(self, name: str, commit: int, created_ns: int, path: str) -> None:
        self._put("tags", name.encode(), keys.encode_tag(commit, created_ns, path))

    def tag_delete(self, name: str) -> bool:
        return self._delete("tags", name.encode())

    def tags(self) -> list[Tag]:
        """Every tag, by name."""
        return [Tag(k.decode(), *keys.decode_tag(v)) for k, v in self._prefix("tags", b"")]
