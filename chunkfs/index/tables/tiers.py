"""Tiers: ``uploads``, ``copies``, ``moves``, ``unencoded``, ``runs``, ``pins``, ``counters`` (keys.py, "Tiers")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from chunkfs.errors import CorruptData
from chunkfs.index import keys
from chunkfs.index.tables.base import BaseTables
from chunkfs.types import ChunkId, PackId, Tier


class RunRecord(NamedTuple):
    """Lifecycle state of one run (``runs`` in keys.py)."""

    completed_ns: int = 0  # 0: not marked complete
    last_read_ns: int = 0  # 0: never read from warm/cold
    held: Tier | None = None  # a tier the policy must not move the run from


class TierTables(BaseTables):
    """The write-back queue, tier copies and operations in flight, runs, pins, activity counters."""

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

    def unencoded_put(self, pack: PackId, moved_ns: int) -> None:
        self._put("unencoded", pack, keys.encode_i64(moved_ns))

    def unencoded_delete(self, pack: PackId) -> bool:
        return self._delete("unencoded", pack)

    def is_unencoded(self, pack: PackId) -> bool:
        """Whether ``pack`` is on warm as ingest stored it, awaiting its run's re-encoding."""
        return self._get("unencoded", pack) is not None

    def unencoded(self) -> set[PackId]:
        """Every pack ``is_unencoded`` (few: packs evicted early, until their runs complete)."""
        return {bytes(key) for key, _ in self._prefix("unencoded", b"")}

    def _path_key(self, path: str) -> bytes:
        """``path`` as a ``runs``/``pins`` key, recording a shortened form (keys.py, "Long keys")."""
        key = keys.path_key(path)
        if keys.is_short_path(key) and self._get("long_keys", key) is None:
            self._put("long_keys", key, path.encode("utf-8", "surrogateescape"))
        return key

    def _path_of(self, key: bytes) -> str:
        if not keys.is_short_path(key):
            return keys.decode_path(key)
        full = self._get("long_keys", bytes(key))
        if full is None:
            raise CorruptData(f"path key {bytes(key)[:40]!r}…: its full path is missing; run `chunkfs index rebuild`")
        return keys.decode_path(full)

    def run_get(self, group: str) -> RunRecord:
        raw = self._get("runs", keys.path_key(group))
        if raw is None:
            return RunRecord()
        completed, last_read, held = keys.decode_run(raw)
        return RunRecord(completed, last_read, None if held == keys.NO_TIER else Tier(held))

    def run_put(self, group: str, rec: RunRecord) -> None:
        held = keys.NO_TIER if rec.held is None else int(rec.held)
        self._put("runs", self._path_key(group), keys.encode_run(rec.completed_ns, rec.last_read_ns, held))

    def runs(self) -> Iterator[tuple[str, RunRecord]]:
        for key, _ in self._prefix("runs", b""):
            group = self._path_of(key)
            yield group, self.run_get(group)

    def pin_put(self, path: str, pinned_ns: int, chunks: list[ChunkId]) -> None:
        self._put("pins", self._path_key(path), keys.encode_pin(pinned_ns, chunks))

    def pin_delete(self, path: str) -> bool:
        return self._delete("pins", keys.path_key(path))

    def pins(self) -> Iterator[tuple[str, int, list[ChunkId]]]:
        """(path, pinned ns, chunk ids) of every pin."""
        for key, value in self._prefix("pins", b""):
            yield (self._path_of(key), *keys.decode_pin(value))

    def counters_add(self, deltas: dict[str, int]) -> None:
        for name, delta in deltas.items():
            if delta:
                raw = self._get("counters", name.encode())
                total = keys.decode_u64(raw) if raw is not None else 0
                self._put("counters", name.encode(), keys.u64(max(0, total + delta)))

    def counters(self) -> dict[str, int]:
        return {bytes(k).decode(): keys.decode_u64(v) for k, v in self._prefix("counters", b"")}

    def upload_error(self) -> tuple[int, str] | None:
        return self._failure(keys.META_UPLOAD_ERROR)

    def upload_error_put(self, time_ns: int, message: str | None) -> None:
        self._failure_put(keys.META_UPLOAD_ERROR, time_ns, message)
