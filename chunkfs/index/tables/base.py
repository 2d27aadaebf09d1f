"""The transaction itself, and the repository-wide tables: ``meta``, ``chunks``, ``packs``."""

from __future__ import annotations

from collections.abc import Iterator

import lmdb

from chunkfs import clock
from chunkfs.index import keys
from chunkfs.types import ROOT_INODE, ChunkId, ChunkLocation, PackId, PackInfo


class BaseTables:
    """One open LMDB transaction (read-only or write): raw access, and the base tables."""

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

    def _failure(self, name: bytes) -> tuple[int, str] | None:
        """(time ns, message) of a failure recorded under ``meta/name`` (``upload_error``,
        ``cluster_error``), or None."""
        raw = self._get("meta", name)
        return keys.decode_failure(raw) if raw is not None else None

    def _failure_put(self, name: bytes, time_ns: int, message: str | None) -> None:
        """Record a failure under ``meta/name``, or clear it (``message`` None)."""
        if message is None:
            self._delete("meta", name)
        else:
            self._put("meta", name, keys.encode_failure(time_ns, message))

    def _next(self, name: bytes) -> int:
        n = keys.decode_u64(self._get("meta", name))
        self._put("meta", name, keys.u64(n + 1))
        return n

    def next_inode(self) -> int:
        return self._next(keys.META_NEXT_INODE)

    def next_manifest(self) -> int:
        return self._next(keys.META_NEXT_MANIFEST)

    def repo_id_put(self, repo_id: bytes) -> None:
        """Set the repository id (``index rebuild`` taking it back from a location's marker)."""
        self._put("meta", keys.META_REPO_ID, bytes(repo_id))

    def restore_record(self, db: str, key: bytes, value: bytes) -> None:
        """Put a record exactly as read from another index (``index rebuild`` salvaging a damaged one)."""
        self._put(db, key, value)

    def fix_sequences(self) -> None:
        """Make the next inode, manifest and commit numbers larger than any in use (after records
        were restored from elsewhere, the counters may lag behind them)."""
        for name, db, floor in (
            (keys.META_NEXT_INODE, "inodes", ROOT_INODE + 1),
            (keys.META_NEXT_MANIFEST, "manifests", 1),
            (keys.META_NEXT_COMMIT, "commits", 1),
        ):
            cursor = self._txn.cursor(db=self._dbs[db])
            top = keys.decode_u64(cursor.key()) + 1 if cursor.last() else floor
            raw = self._get("meta", name)
            self._put("meta", name, keys.u64(max(top, floor, keys.decode_u64(raw) if raw else floor)))

    # -- chunks -----------------------------------------------------------------

    def chunk_get(self, chunk: ChunkId) -> ChunkLocation | None:
        raw = self._get("chunks", chunk)
        return keys.decode_location(raw) if raw is not None else None

    def chunk_put(self, chunk: ChunkId, loc: ChunkLocation) -> None:
        self._put("chunks", chunk, keys.encode_location(loc))

    def chunk_delete(self, chunk: ChunkId) -> bool:
        """Forget a chunk (and its ``deltas`` entry)."""
        self._delete("deltas", chunk)
        return self._delete("chunks", chunk)

    def chunks(self) -> Iterator[tuple[ChunkId, ChunkLocation]]:
        for key, value in self._prefix("chunks", b""):
            yield key, keys.decode_location(value)

    def chunk_count(self) -> int:
        return self._txn.stat(self._dbs["chunks"])["entries"]

    def delta_base(self, chunk: ChunkId) -> ChunkId | None:
        """The base of ``chunk`` if it is stored as a delta (``deltas``)."""
        raw = self._get("deltas", chunk)
        return bytes(raw) if raw is not None else None

    def delta_put(self, chunk: ChunkId, base: ChunkId) -> None:
        self._put("deltas", chunk, base)

    def delta_delete(self, chunk: ChunkId) -> bool:
        return self._delete("deltas", chunk)

    def deltas(self) -> Iterator[tuple[ChunkId, ChunkId]]:
        """(delta chunk, base chunk) of every chunk stored as a delta."""
        for key, value in self._prefix("deltas", b""):
            yield bytes(key), bytes(value)

    def with_bases(self, chunks: set[ChunkId]) -> set[ChunkId]:
        """``chunks`` and every base their deltas need, transitively: what must stay stored (gc's
        mark), be resurrected or be staged for them to be read."""
        n = self._txn.stat(self._dbs["deltas"])["entries"]
        if not n:
            return chunks
        # gc's mark asks for every live chunk: one scan of ``deltas`` beats a lookup per chunk
        base_of = dict(self.deltas()).get if n <= len(chunks) else self.delta_base
        out = set(chunks)
        todo = list(chunks)
        while todo:
            base = base_of(todo.pop())
            if base is not None and base not in out:
                out.add(base)
                todo.append(base)
        return out

    # -- packs ------------------------------------------------------------------

    def pack_get(self, pack: PackId) -> PackInfo | None:
        raw = self._get("packs", pack)
        return keys.decode_pack(raw) if raw is not None else None

    def pack_put(self, pack: PackId, info: PackInfo) -> None:
        self._put("packs", pack, keys.encode_pack(info))

    def pack_delete(self, pack: PackId) -> bool:
        self._delete("unencoded", pack)
        return self._delete("packs", pack)

    def packs(self) -> Iterator[tuple[PackId, PackInfo]]:
        for key, value in self._prefix("packs", b""):
            yield key, keys.decode_pack(value)

    # -- rebuilding -----------------------------------------------------------------

    def clear_chunk_index(self) -> None:
        """Empty the chunks, deltas and packs databases (``chunkfs index rebuild`` refills them) and
        the ``unencoded`` notes of the packs (lost: such packs stay as they are)."""
        self._txn.drop(self._dbs["chunks"], delete=False)
        self._txn.drop(self._dbs["deltas"], delete=False)
        self._txn.drop(self._dbs["unencoded"], delete=False)
        self._txn.drop(self._dbs["packs"], delete=False)
