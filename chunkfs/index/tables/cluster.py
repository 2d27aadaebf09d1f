"""Cluster: ``meta/cluster``, ``meta/cluster_applied``, ``meta/cluster_error``, ``meta/cluster_gc``,
``meta/cluster_repack``, ``meta/foreign/…``, ``meta/forgotten/…``, ``meta/retiring/…``,
``outbox`` (keys.py, "Cluster")."""

from __future__ import annotations

from chunkfs.index import keys
from chunkfs.index.tables.base import BaseTables


class ClusterTables(BaseTables):
    """A shared repository's membership record, its log position and its journal of changes."""

    def cluster_get(self) -> dict | None:
        """This node's record (``{"node", "url", …}``), or None: the repository is not shared."""
        raw = self._get("meta", keys.META_CLUSTER)
        return keys.decode_cluster(raw) if raw is not None else None

    def cluster_put(self, doc: dict) -> None:
        self._put("meta", keys.META_CLUSTER, keys.encode_cluster(doc))

    def applied_get(self) -> int:
        """The last log entry applied here (0: none)."""
        raw = self._get("meta", keys.META_CLUSTER_APPLIED)
        return keys.decode_u64(raw) if raw is not None else 0

    def applied_put(self, position: int) -> None:
        self._put("meta", keys.META_CLUSTER_APPLIED, keys.u64(position))

    def cluster_error(self) -> tuple[int, str] | None:
        """(time ns, message) of the last failure to reach the shared log, or None."""
        return self._failure(keys.META_CLUSTER_ERROR)

    def cluster_error_put(self, time_ns: int, message: str | None) -> None:
        self._failure_put(keys.META_CLUSTER_ERROR, time_ns, message)

    def outbox_put(self, time_ns: int, op: dict) -> int:
        """Journal one change; returns its sequence number (one more than the newest)."""
        cursor = self._txn.cursor(db=self._dbs["outbox"])
        seq = keys.decode_u64(cursor.key()) + 1 if cursor.last() else 1
        self._put("outbox", keys.u64(seq), keys.encode_outbox(time_ns, op))
        return seq

    def outbox(self, limit: int = 1 << 30) -> list[tuple[int, int, dict]]:
        """(sequence, time ns, change) of the oldest ``limit`` journaled changes."""
        out = []
        for key, value in self._prefix("outbox", b""):
            if len(out) >= limit:
                break
            out.append((keys.decode_u64(key), *keys.decode_outbox(value)))
        return out

    def outbox_count(self) -> int:
        return self._txn.stat(self._dbs["outbox"])["entries"]

    def outbox_delete(self, seqs: list[int]) -> None:
        for seq in seqs:
            self._delete("outbox", keys.u64(seq))

    def cluster_gc_get(self) -> dict | None:
        """The newest gc round applied here (``{"round", "epoch", "seq"}``), or None."""
        raw = self._get("meta", keys.META_CLUSTER_GC)
        return keys.decode_cluster(raw) if raw is not None else None

    def cluster_gc_put(self, doc: dict) -> None:
        self._put("meta", keys.META_CLUSTER_GC, keys.encode_cluster(doc))

    def foreign_put(self, pack: bytes, node: str) -> None:
        self._put("meta", keys.META_FOREIGN + bytes(pack), node.encode())

    def foreign(self, pack: bytes) -> str | None:
        """The node that wrote ``pack`` when it is another node (a log entry named it), else None."""
        raw = self._get("meta", keys.META_FOREIGN + bytes(pack))
        return bytes(raw).decode() if raw is not None else None

    def foreign_packs(self, node: str) -> list[bytes]:
        """The packs of another node ``node`` known here."""
        want = node.encode()
        return [bytes(k[len(keys.META_FOREIGN) :]) for k, v in self._prefix("meta", keys.META_FOREIGN) if bytes(v) == want]

    def foreign_delete(self, pack: bytes) -> None:
        self._delete("meta", keys.META_FOREIGN + bytes(pack))

    def forgotten_put(self, node: str, time_ns: int) -> None:
        self._put("meta", keys.META_FORGOTTEN + node.encode(), keys.encode_i64(time_ns))

    def forgotten(self) -> set[str]:
        """The members removed for good (``chunkfs forget-node``)."""
        return {bytes(k[len(keys.META_FORGOTTEN) :]).decode() for k, _ in self._prefix("meta", keys.META_FORGOTTEN)}

    def retiring_put(self, pack: bytes, journaled_ns: int, position: int = 0) -> None:
        self._put("meta", keys.META_RETIRING + bytes(pack), keys.encode_retiring(journaled_ns, position))

    def retiring(self) -> dict[bytes, tuple[int, int]]:
        """This node's packs kept on warm for other nodes: pack → (journaled ns, log position or 0)."""
        return {
            bytes(k[len(keys.META_RETIRING) :]): keys.decode_retiring(bytes(v))
            for k, v in self._prefix("meta", keys.META_RETIRING)
        }

    def retiring_delete(self, pack: bytes) -> None:
        self._delete("meta", keys.META_RETIRING + bytes(pack))

    def repack_due(self) -> int:
        """When a sweep applied here left this node's packs to look at for repacking (0: none)."""
        raw = self._get("meta", keys.META_CLUSTER_REPACK)
        return keys.decode_i64(raw) if raw is not None else 0

    def repack_due_put(self, time_ns: int) -> None:
        self._put("meta", keys.META_CLUSTER_REPACK, keys.encode_i64(time_ns))

    def repack_due_clear(self) -> None:
        self._delete("meta", keys.META_CLUSTER_REPACK)
