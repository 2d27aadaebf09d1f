"""Operations: ``replicas``, ``drills``, ``meta/backup`` (keys.py, "Operations")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from chunkfs.index import keys
from chunkfs.index.tables.base import BaseTables
from chunkfs.types import PackId


class Replica(NamedTuple):
    """A verified copy of a pack on a replica (``replicas``)."""

    pack: PackId
    rid: bytes
    verified_ns: int
    size: int
    digest: bytes


class OperationsTables(BaseTables):
    """Replica copies, restore drills, the metadata backup's record."""

    # -- operations: replicas, drills, metadata backups (keys.py "Operations") ---------------

    def replica_put(self, pack: PackId, rid: bytes, verified_ns: int, size: int, digest: bytes) -> None:
        self._put("replicas", keys.replica_key(pack, rid), keys.encode_replica(verified_ns, size, digest))

    def replica_get(self, pack: PackId, rid: bytes) -> tuple[int, int, bytes] | None:
        """(verified ns, size, BLAKE3) of a pack's copy on replica ``rid``, or None."""
        raw = self._get("replicas", keys.replica_key(pack, rid))
        return keys.decode_replica(raw) if raw is not None else None

    def replica_delete(self, pack: PackId, rid: bytes) -> bool:
        return self._delete("replicas", keys.replica_key(pack, rid))

    def replicas(self) -> Iterator[Replica]:
        """Every verified replica copy."""
        for key, value in self._prefix("replicas", b""):
            yield Replica(*keys.decode_replica_key(key), *keys.decode_replica(value))

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
