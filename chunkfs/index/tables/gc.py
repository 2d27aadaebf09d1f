"""Garbage collection: ``condemned``, ``gc_leases``, ``meta/gc_epoch``, ``meta/seal_request`` (keys.py, "Garbage collection")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from chunkfs.index import keys
from chunkfs.index.tables.base import BaseTables
from chunkfs.types import ChunkId, ChunkLocation


class Lease(NamedTuple):
    """A writer lease (``gc_leases``): a process that writes chunks, and the floor of its windows."""

    id: bytes
    pid: int
    floor: int
    heartbeat_ns: int
    host: str


class GcTables(BaseTables):
    """Condemned chunks, writer leases, the gc epoch and seal requests."""

    # -- garbage collection (docs/gc.md; keys.py "Garbage collection") -----------------------

    def gc_epoch(self) -> int:
        raw = self._get("meta", keys.META_GC_EPOCH)
        return keys.decode_u64(raw) if raw is not None else 0

    def seal_request(self) -> int:
        """When a gc last asked writers to seal their open packs (ns; 0: never)."""
        raw = self._get("meta", keys.META_SEAL_REQUEST)
        return keys.decode_i64(raw) if raw is not None else 0

    def seal_request_put(self, now_ns: int) -> None:
        self._put("meta", keys.META_SEAL_REQUEST, keys.encode_i64(now_ns))

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

    def condemned_move(self, chunk: ChunkId, loc: ChunkLocation) -> None:
        """A condemned chunk's bytes moved (a pack rewrite): same epoch and time, new location."""
        epoch, ns, _ = keys.decode_condemned(self._get("condemned", chunk))
        self._put("condemned", chunk, keys.encode_condemned(epoch, ns, loc))

    def condemned_location(self, chunk: ChunkId) -> ChunkLocation | None:
        """Where a condemned chunk's bytes still are (None: not condemned)."""
        found = self.condemned_get(chunk)
        return found[2] if found is not None else None

    def condemned_delete(self, chunk: ChunkId) -> bool:
        """Forget a condemned chunk for good (the sweep), and its ``deltas`` entry."""
        self._delete("deltas", chunk)
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
        for chunk in self.with_bases(set(chunks)):  # a delta needs its bases: condemned with it, back with it
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

    def leases(self) -> Iterator[Lease]:
        """Every writer lease."""
        for key, value in self._prefix("gc_leases", b""):
            yield Lease(bytes(key), *keys.decode_lease(value))

    def gc_state_clear(self) -> None:
        """Drop every writer lease and condemned entry (``index rebuild`` refills ``chunks`` from the
        packs, so nothing is condemned any more; a recovered repository has no live writer)."""
        self._txn.drop(self._dbs["gc_leases"], delete=False)
        self._txn.drop(self._dbs["condemned"], delete=False)
