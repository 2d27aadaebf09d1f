"""The checkpoint registry: ``ckpts``, ``ckpt_ino``, ``ckpt_run``, ``ckpt_metric``, ``long_keys`` (keys.py, "Registry")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from chunkfs.errors import CorruptData
from chunkfs.index import keys
from chunkfs.index.tables.base import BaseTables


class CkptRow(NamedTuple):
    """One checkpoint record: its key (fields, step, inode) and its value."""

    fields: tuple[str, ...]
    step: int
    ino: int
    commit: int
    time_ns: int
    metric: float | None
    doc: dict


class RegistryTables(BaseTables):
    """Checkpoint records under their composite keys, and the indexes beside them."""

    # -- checkpoint registry (namespace/registry/; keys.py "Registry") ----------------

    # Keys may hold shortened forms of long fields (keys.py, "Long keys"): every method
    # below returns full fields (``_full``), and writes record the forms they use.

    def _full(self, fields: tuple[str, ...]) -> tuple[str, ...]:
        """``fields`` as decoded from a key, with each shortened form replaced by the full name."""
        out = []
        for f in fields:
            b = f.encode("utf-8", "surrogateescape")
            if keys.is_short_field(b):
                full = self._get("long_keys", b)
                if full is None:
                    raise CorruptData(f"registry key field {f!r}: its full name is missing; run `chunkfs index rebuild`")
                f = keys.decode_path(full)
            out.append(f)
        return tuple(out)

    def _note_long(self, pairs) -> None:
        for short, full in pairs:
            self._put("long_keys", short, full)

    def _decode_key(self, key: bytes) -> tuple[tuple[str, ...], int, int]:
        fields, step, ino = keys.decode_ckpt_key(key)
        return self._full(fields), step, ino

    def _ckpt_range(self, db: str, fields, open_last: bool) -> Iterator[tuple[bytes, bytes]]:
        """Keys and values under a fields prefix; an open last field longer than the stored
        prefix of a shortened field is matched against the full names."""
        rows = self._prefix(db, keys.ckpt_prefix(fields, open_last))
        if keys.open_prefix_is_exact(fields, open_last):
            yield from rows
            return
        n = len(fields)
        for key, value in rows:
            got = self._full(keys.decode_ckpt_fields(key)[:n])
            if got[:-1] == tuple(fields[:-1]) and got[-1].startswith(fields[-1]):
                yield key, value

    def ckpt_key_of(self, ino: int) -> tuple[tuple[str, ...], int] | None:
        """(fields, step) of directory ``ino``'s checkpoint record, or None."""
        raw = self._get("ckpt_ino", keys.u64(ino))
        if raw is None:
            return None
        fields, step, _ = self._decode_key(raw)
        return fields, step

    def ckpt_get(self, ino: int) -> CkptRow | None:
        """Directory ``ino``'s record, or None."""
        key = self._get("ckpt_ino", keys.u64(ino))
        if key is None:
            return None
        raw = self._get("ckpts", key)
        if raw is None:
            return None
        return CkptRow(*self._decode_key(key), *keys.decode_ckpt(raw))

    def ckpt_record(self, fields, step: int, ino: int) -> tuple[int, int, float | None, dict] | None:
        """(commit, time ns, metric, document) of the record under (fields, step, ino)."""
        raw = self._get("ckpts", keys.ckpt_key(fields, step, ino))
        return keys.decode_ckpt(raw) if raw is not None else None

    def ckpt_put(self, ino: int, fields, step: int, commit: int, time_ns: int, metric, doc: dict) -> None:
        """Create or replace (and re-key, if fields or step changed) ``ino``'s record."""
        self.ckpt_delete(ino)
        self._note_long(keys.long_fields(fields))
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
        fields, step, _ = self._decode_key(key)
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
        for key, _ in self._ckpt_range("ckpts", fields, open_last):
            yield self._decode_key(key)

    def ckpt_rows(self, fields=(), *, open_last: bool = False) -> Iterator[CkptRow]:
        """Every record under a fields prefix, in key order: one pass, for queries that read every record."""
        for key, value in self._ckpt_range("ckpts", fields, open_last):
            yield CkptRow(*self._decode_key(key), *keys.decode_ckpt(value))

    def ckpt_run_scan(self, run: str) -> Iterator[tuple[tuple[str, ...], int, int]]:
        """(fields, step, inode) of every record whose last level is ``run``."""
        for key, _ in self._prefix("ckpt_run", keys.ckpt_run_prefix(run)):
            rotated, step, ino = self._decode_key(key)
            yield (*rotated[1:], rotated[0]), step, ino

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
        exact = keys.open_prefix_is_exact(fields, open_last)
        for key in self._groups("ckpts", keys.ckpt_prefix(fields, open_last), keys.CKPT_TRAILER):
            group = self._full(keys.decode_ckpt_fields(key))
            if exact or (group[: len(fields) - 1] == tuple(fields[:-1]) and group[len(fields) - 1].startswith(fields[-1])):
                yield group

    def ckpt_run_groups(self, run: str) -> Iterator[tuple[str, ...]]:
        """The distinct full field tuples whose last level is ``run``."""
        for key in self._groups("ckpt_run", keys.ckpt_run_prefix(run), keys.CKPT_TRAILER):
            rotated = self._full(keys.decode_ckpt_fields(key))
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

    def ckpt_all(self) -> Iterator[CkptRow]:
        """Every record, in key order."""
        for key, value in self._prefix("ckpts", b""):
            yield CkptRow(*self._decode_key(key), *keys.decode_ckpt(value))

    def ckpt_check(self) -> list[str]:
        """Where the registry databases disagree with each other (keys.py: exactly one
        ``ckpt_ino`` entry per record, one ``ckpt_run`` entry per record, one ``ckpt_metric``
        entry per record with a metric); fsck reports these, a registry rebuild mends them."""
        problems = []
        records = {bytes(key): value for key, value in self._prefix("ckpts", b"")}
        pointed: set[bytes] = set()
        for key, value in self._prefix("ckpt_ino", b""):
            ino, target = keys.decode_u64(key), bytes(value)
            if target not in records:
                problems.append(f"inode {ino}: its checkpoint index entry names no record")
            elif keys.decode_ckpt_key(target)[2] != ino:
                problems.append(f"inode {ino}: its checkpoint index entry names the record of inode "
                                f"{keys.decode_ckpt_key(target)[2]}")  # fmt: skip
            else:
                pointed.add(target)
        runs, metrics = set(), set()
        for key, value in records.items():
            fields, step, ino = self._decode_key(key)
            if key not in pointed:
                problems.append(f"checkpoint record of inode {ino} (step {step}): no index entry points to it")
            runs.add(keys.ckpt_run_key(fields, step, ino))
            metric = keys.decode_ckpt_head(value)[2]
            if metric is not None:
                metrics.add(keys.ckpt_metric_key(fields, metric, step, ino))
        for db, want in (("ckpt_run", runs), ("ckpt_metric", metrics)):
            have = {bytes(key) for key, _ in self._prefix(db, b"")}
            if have != want:
                problems.append(f"{db}: {len(have - want)} entries without a record, {len(want - have)} records "
                                f"without an entry")  # fmt: skip
        return problems

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
