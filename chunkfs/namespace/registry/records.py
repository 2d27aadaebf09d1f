"""The ``Registry``: checkpoint records kept in step with the tree, and the queries over them.

The tree calls the ``on_*`` hooks inside its own write transactions, so records
follow creates, renames and removals atomically. Whether a directory is a
checkpoint depends on its place as well as its name: a checkpoint that gets a
step directory below it was a level that happens to end in a number (its record
is dropped), except that a step directory of the same step below a checkpoint
that already holds files is part of it (DeepSpeed's
``checkpoint-500/global_step500``). Queries (``find``, ``latest``, ``best``,
``links``) are range scans of the index (``scans.py``), never walks of the tree.
"""

from __future__ import annotations

import logging
import posixpath
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from chunkfs import clock
from chunkfs.config import RegistrySettings
from chunkfs.errors import InvalidArgument, NotFound, UsageError
from chunkfs.index import Index, Txn
from chunkfs.index.txn import CkptRow
from chunkfs.namespace.journal import Journal
from chunkfs.namespace.registry import scans
from chunkfs.namespace.registry.checkpoint import (
    Checkpoint,
    forget_sidecar,
    metric_value,
    new_doc,
    note_sidecar,
    set_user_value,
)
from chunkfs.namespace.registry.keypath import (
    ParsedPath,
    components,
    dir_prefixes,
    normalized,
    parse_checkpoint,
    run_of,
    step_of,
)
from chunkfs.namespace.registry.query import Condition, parse_sort, parse_where, sort_records
from chunkfs.namespace.registry.sidecars import MAX_SIDECAR, SIDECARS, Extracted, extract_or_reason
from chunkfs.namespace.registry.treewalk import (
    children,
    enclosing_checkpoint,
    file_name,
    holds_files,
    inode_of,
    path_in,
    resolve,
)
from chunkfs.namespace.registry.values import check_key, is_flat, json_safe, parse_value, value_text
from chunkfs.types import ROOT_INODE

log = logging.getLogger(__name__)

LATEST = "@latest"
BEST = "@best"
XATTR_PREFIX = "user.chunkfs."


@dataclass
class ScanResult:
    """What ``Registry.scan`` did: checkpoints found, sidecar files read, stale records dropped."""

    checkpoints: int = 0
    sidecars: int = 0
    dropped: int = 0


class Registry:
    """Checkpoint records of one repository: kept by the tree's hooks, read by queries."""

    def __init__(self, index: Index, settings: RegistrySettings | None = None) -> None:
        self.index = index
        self.settings = settings or RegistrySettings()
        self.levels = self.settings.level_names
        self._pattern = re.compile(self.settings.step_pattern)
        self.metric = self.settings.best_metric
        self._largest = self.settings.best_mode == "max"
        self.journal = Journal(index)  # `chunkfs meta set` is a change other nodes replay
        self._read_built()

    @contextmanager
    def _writing(self, txn: Txn | None) -> Iterator[Txn]:
        """``txn``, or (without one) a write transaction of our own, committed on leaving."""
        if txn is not None:
            yield txn
        else:
            with self.index.write() as t:
                yield t

    # -- paths ------------------------------------------------------------------------------

    def parse(self, path: str) -> ParsedPath | None:
        """Fields and step of ``path`` if a directory there would be a checkpoint (by its name)."""
        return parse_checkpoint(path, len(self.levels), self._pattern)

    def run_of(self, path: str) -> str:
        """The run (pack group) of the file at ``path`` (``keypath.run_of``)."""
        return run_of(path, self._pattern)

    def level_of(self, path: str) -> str | None:
        """The level directory ``path`` is for the checkpoints below it (None: there are none).

        The FUSE layer shows ``@latest``/``@best`` in a directory when this is not None.
        """
        if not components(path):
            return None
        with self.index.read() as t:
            for prefix, open_last, level in dir_prefixes(path, self.levels):
                if next(t.ckpt_groups(prefix, open_last=open_last), None) is not None:
                    return level
        return None

    path_in = staticmethod(path_in)
    """``path_in(t, ino)``: the path of ``ino`` as the transaction ``t`` sees it (``treewalk``)."""

    # -- hooks: called by the tree inside its write transaction --------------------------------

    def on_dir_changed(self, t: Txn, ino: int, path: str | None = None) -> None:
        """Directory ``ino`` was created, or moved/renamed to ``path``: create, re-key or drop records.

        For a directory that has entries (a rename) every directory below is
        re-keyed too (``reindex_subtree``).
        """
        self.ensure_built(t)
        path = path if path is not None else self.path_in(t, ino)
        if t.has_dirents(ino):
            self.reindex_subtree(t, ino, path)
        else:
            self._index_dir(t, ino, path, enclosing_checkpoint(t, ino))

    def reindex_subtree(self, t: Txn, ino: int, path: str | None = None) -> list[int]:
        """Re-derive the records of directory ``ino`` and every directory below it; their inodes."""
        self.ensure_built(t)
        path = path if path is not None else self.path_in(t, ino)
        return self._walk(t, ino, path, enclosing_checkpoint(t, ino), None)

    def on_dir_removed(self, t: Txn, ino: int) -> bool:
        """Directory ``ino`` was removed (or replaced by a rename): drop its record."""
        self.ensure_built(t)
        return t.ckpt_delete(ino)

    @staticmethod
    def wants(filename: str | bytes, size: int | None = None) -> bool:
        """Whether ``on_file_committed`` should be given this file's bytes (a sidecar file)."""
        return file_name(filename) in SIDECARS and (size is None or size <= MAX_SIDECAR)

    def on_file_committed(
        self, dir_ino: int, filename: str | bytes, data: bytes | None = None, *, txn: Txn | None = None
    ) -> bool:
        """A file of directory ``dir_ino`` was committed; ``data``: its bytes if ``wants`` it.

        Marks the checkpoint as changed now (``--latest`` ties) and re-extracts
        a sidecar's metadata. A malformed sidecar is logged and skipped (the
        record keeps everything else); this never raises for bad file content.
        Returns whether ``dir_ino`` is a checkpoint.
        """
        name = file_name(filename)
        extracted = extract_or_reason(name, data) if data is not None and name in SIDECARS else None
        with self._writing(txn) as t:
            return self._apply_file(t, dir_ino, name, extracted)

    def on_file_removed(self, t: Txn, dir_ino: int, filename: str | bytes) -> bool:
        """A file of directory ``dir_ino`` was removed: forget what its sidecar said."""
        name = file_name(filename)
        self.ensure_built(t)
        got = t.ckpt_get(dir_ino)
        if got is None or name not in SIDECARS:
            return False
        forget_sidecar(got.doc, name)
        self._store(t, dir_ino, got.fields, got.step, got.doc, stamp=(got.commit, got.time_ns))
        return True

    def on_xattr(self, t: Txn, ino: int, name: str | bytes, value: bytes | None) -> bool:
        """``setxattr``/``removexattr`` (``value`` None) of ``ino``: ``user.chunkfs.KEY`` sets KEY.

        Returns False (nothing to do) for other names and for directories that
        are not checkpoints; raises ``InvalidArgument`` for an unusable KEY.
        """
        name = file_name(name)
        if not name.startswith(XATTR_PREFIX):
            return False
        self.ensure_built(t)
        got = t.ckpt_get(ino)
        if got is None:
            return False
        key = check_key(name[len(XATTR_PREFIX) :], self.levels)
        text = value.rstrip(b"\x00").decode(errors="surrogateescape") if value is not None else None
        set_user_value(got.doc, key, None if text is None else parse_value(text))
        self._store(t, ino, got.fields, got.step, got.doc, stamp=(got.commit, got.time_ns))
        return True

    # -- keeping records ---------------------------------------------------------------------------

    def _index_dir(self, t: Txn, ino: int, path: str, enclosing: int | None, saved=None) -> bool:
        """Give ``ino`` the record its path and place call for; whether it is a checkpoint."""
        parsed = self.parse(path)
        outer = t.ckpt_key_of(enclosing) if parsed is not None and enclosing is not None else None
        if outer is not None:
            if outer[1] == parsed.step and holds_files(t, enclosing):
                parsed = None  # checkpoint-500/global_step500: part of the checkpoint
            else:
                level = t.ckpt_get(enclosing).doc.get("path", f"inode {enclosing}")
                t.ckpt_delete(enclosing)  # it was a level that happens to end in a number
                log.info("%s: a level above checkpoint %s, no longer a checkpoint itself", level, path)
        if parsed is None:
            t.ckpt_delete(ino)
            return False
        old = saved.pop(ino, None) if saved is not None else t.ckpt_get(ino)
        if old is None:
            self._store(t, ino, parsed.fields, parsed.step, new_doc(path))
            return True
        commit, time_ns, doc = old.commit, old.time_ns, old.doc
        moved = doc.get("path") != path
        doc["path"] = path
        self._store(t, ino, parsed.fields, parsed.step, doc, stamp=None if moved else (commit, time_ns))
        return True

    def _walk(self, t: Txn, ino: int, path: str, enclosing: int | None, saved) -> list[int]:
        """``_index_dir`` for ``ino`` and every directory below it (``saved``: the records to
        reuse, by inode, when rebuilding); the inodes that are checkpoints."""
        found = []
        stack = [(ino, path, enclosing)]
        while stack:
            d, p, enc = stack.pop()
            if d != ROOT_INODE and self._index_dir(t, d, p, enc, saved):
                found.append(d)
                enc = d
            base = p.rstrip("/")
            for name, child, rec in children(t, d):
                if stat.S_ISDIR(rec.mode):
                    stack.append((child, f"{base}/{file_name(name)}", enc))
        return [d for d in found if t.ckpt_key_of(d) is not None]  # some were levels after all

    def _store(
        self, t: Txn, ino: int, fields, step: int, doc: dict, *, stamp: tuple[int, int] | None = None
    ) -> None:
        """Write a record; ``stamp``: the (commit, time) it keeps, None: it changed now."""
        commit, time_ns = stamp if stamp is not None else (t.last_commit(), clock.now_ns())
        t.ckpt_put(ino, fields, step, commit, time_ns, metric_value(doc, self.metric), doc)

    def _apply_file(self, t: Txn, dir_ino: int, name: str, extracted: Extracted | str | None) -> bool:
        """Record a committed file of ``dir_ino``: what its sidecar said (``extracted``), or why
        it was skipped (a string); None: not a sidecar, only the time of change moves."""
        self.ensure_built(t)
        got = t.ckpt_get(dir_ino)
        if got is None:
            return False
        fields, step, doc = got.fields, got.step, got.doc
        problem = note_sidecar(doc, name, extracted) if extracted is not None else None
        if problem:
            log.warning("%s/%s: %s", doc.get("path", f"inode {dir_ino}"), name, problem)
        self._store(t, dir_ino, fields, step, doc)
        return True

    # -- the settings the databases were built with ----------------------------------------------

    def _read_built(self) -> None:
        """Compare the settings the databases were built with to ours (a read: works read-only)."""
        self._want = {
            "levels": list(self.levels),
            "step_pattern": self.settings.step_pattern,
            "metric": self.metric,
        }
        with self.index.read() as t:
            have = t.registry_settings()
            empty = t.ckpt_count() == 0
        same = {k: empty or (have or {}).get(k) == v for k, v in self._want.items()}
        self._built = have == self._want
        self._keys_ok = same["levels"] and same["step_pattern"]
        self._metric_ok = same["metric"]
        self._warned = False

    def ensure_built(self, txn: Txn | None = None) -> None:
        """Bring the databases in line with the settings: after a change of ``registry.levels``
        or ``step_pattern`` every record is re-keyed from the tree (metadata kept), after a
        change of ``best_metric`` the metric index is refilled. Every write calls this first;
        the mount may call it once at start. Needs a writable index."""
        if self._built:
            return
        with self._writing(txn) as t:
            self._build(t)

    def _build(self, t: Txn) -> None:
        """Re-key or refill what the settings' change calls for, then record the settings."""
        have = t.registry_settings()
        if have != self._want:
            if have is not None and t.ckpt_count():
                if any(have.get(k) != self._want[k] for k in ("levels", "step_pattern")):
                    log.warning("registry levels or step pattern changed: re-keying every checkpoint record")
                    self._rebuild(t)
                elif have.get("metric") != self.metric:
                    self._remetric(t)
            t.registry_settings_put(self._want)
        self._built = self._keys_ok = self._metric_ok = True

    def _check_read(self) -> None:
        """Warn once when queries read records keyed by other settings (a read cannot rebuild)."""
        if not self._keys_ok and not self._warned:
            self._warned = True
            log.warning(
                "checkpoint records were built with other [registry] levels or step_pattern; results follow "
                "the old ones until the repository is mounted or `chunkfs meta scan` runs"
            )

    def rebuild(self) -> None:
        """Re-key every record from the tree, metadata kept: how fsck mends registry databases
        that disagree with each other (``Txn.ckpt_check``)."""
        with self._writing(None) as t:
            self._rebuild(t)

    def _rebuild(self, t: Txn) -> None:
        """Re-key every record from the tree, keeping each one's document and stamp."""
        saved = {row.ino: row for row in t.ckpt_all()}
        t.ckpt_clear()
        self._walk(t, ROOT_INODE, "/", None, saved)

    def _remetric(self, t: Txn) -> None:
        """Refill the metric index for a new ``best_metric`` (keys and stamps unchanged)."""
        for row in list(t.ckpt_all()):
            self._store(t, row.ino, row.fields, row.step, row.doc, stamp=(row.commit, row.time_ns))

    # -- user metadata -----------------------------------------------------------------------------

    @staticmethod
    def _stored(t: Txn, ino: int, target: int | str) -> CkptRow:
        """``target``'s record; ``NotFound`` if it is not a checkpoint."""
        got = t.ckpt_get(ino)
        if got is None:
            raise NotFound(
                f"{target}: not a checkpoint directory (a directory whose name ends in a step number, "
                f"below its run directory; see docs/registry.md)"
            )
        return got

    def get_meta(self, target: int | str) -> Checkpoint:
        """The record of a checkpoint directory (inode or repository path)."""
        with self.index.read() as t:
            ino = inode_of(t, target)
            row = self._stored(t, ino, target)
            return Checkpoint.from_record(self.levels, ino, row.fields, row.step, row.commit, row.time_ns, row.doc)

    def set_meta(self, target: int | str, values: Mapping[str, Any], *, txn: Txn | None = None) -> Checkpoint:
        """Set user metadata of a checkpoint (text values are parsed: '0.231' → 0.231; None removes).

        Each key is mirrored as the ``user.chunkfs.KEY`` extended attribute, so
        ``getfattr`` through a mount shows what ``chunkfs meta set`` set.
        """
        clean: dict[str, Any] = {}
        for key, v in values.items():
            check_key(key, self.levels)
            if isinstance(v, str):
                v = parse_value(v)
            elif not (v is None or is_flat(v)):
                raise InvalidArgument(f"{key}: a value must be a string, number, boolean or a list of them")
            clean[key] = json_safe(v)
        with self._writing(txn) as t:
            return self._set(t, target, clean)

    def _set(self, t: Txn, target: int | str, values: dict[str, Any]) -> Checkpoint:
        self.ensure_built(t)
        ino = inode_of(t, target)
        row = self._stored(t, ino, target)
        fields, step, commit, time_ns, doc = row.fields, row.step, row.commit, row.time_ns, row.doc
        for key, v in values.items():
            set_user_value(doc, key, v)
            xname = XATTR_PREFIX + key
            if v is None:
                if t.xattr_delete(ino, xname.encode()):
                    self.journal.record(t, "removexattr", path_in(t, ino), name=xname)
            else:
                value = value_text(v).encode(errors="surrogateescape")
                t.xattr_put(ino, xname.encode(), value)
                self.journal.record(t, "setxattr", path_in(t, ino), name=xname, value=value.hex())
        self._store(t, ino, fields, step, doc, stamp=(commit, time_ns))
        return Checkpoint.from_record(self.levels, ino, fields, step, commit, time_ns, doc)

    # -- queries ---------------------------------------------------------------------------------------

    def find(
        self,
        *,
        step: int | None = None,
        where: str | Sequence[Condition] | None = None,
        sort: str | None = None,
        latest: bool = False,
        limit: int | None = None,
        fields: Mapping[str, str | None] | None = None,
        **levels: str | None,
    ) -> list[Checkpoint]:
        """Checkpoints matching level values (``model=``, ``run=``, … by level name), a step and a
        ``where`` expression; ``latest``: only the newest (by step, then time of last change);
        ``sort``: ``KEY`` or ``-KEY`` (descending), comma-separated; ``limit``: at most that many.
        Without ``sort``, records come in key order (levels, then step)."""
        flt = scans.level_filters(self.levels, {**(fields or {}), **levels})
        conds = parse_where(where) if isinstance(where, str) else list(where or [])
        if sort:
            parse_sort(sort)  # bad syntax is an error even when nothing matches
        if limit is not None and limit < 0:
            raise UsageError("--limit must not be negative")
        out: list[Checkpoint] = []
        self._check_read()
        with self.index.read() as t:
            rows = scans.candidate_rows(t, self.levels, flt, step=step, newest=latest and not conds)
            for key_fields, key_step, ino, commit, time_ns, _, doc in rows:
                rec = Checkpoint.from_record(self.levels, ino, key_fields, key_step, commit, time_ns, doc)
                if all(c.matches(rec.get(c.key)) for c in conds):
                    out.append(rec)
        if latest and out:
            out = [max(out, key=lambda r: (r.step, r.time_ns, r.commit, r.ino))]
        out.sort(key=lambda r: (tuple(r.fields.values()), r.step, r.ino))
        if sort:
            out = sort_records(out, sort)
        return out[:limit] if limit is not None else out

    def _target_groups(self, t: Txn, target: scans.Target) -> list[scans.Group]:
        self._check_read()
        return scans.target_groups(t, self.levels, target)

    def _best_key(self, t: Txn, groups: list[scans.Group]) -> scans.Key | None:
        read_metric = None if self._metric_ok else self.metric
        return scans.best_key(t, groups, largest=self._largest, read_metric=read_metric)

    def latest(self, target: scans.Target) -> str | None:
        """Path of the newest checkpoint (by step, then time of last change) below ``target``:
        a directory path, a mapping of level names to values, or the leading level values."""
        with self.index.read() as t:
            return scans.path_at(t, scans.newest_key(t, self._target_groups(t, target)))

    def best(self, target: scans.Target) -> str | None:
        """Path of the checkpoint below ``target`` with the best ``registry.best_metric``
        (min or max by ``registry.best_mode``; ties: the later step); None if none has it."""
        with self.index.read() as t:
            return scans.path_at(t, self._best_key(t, self._target_groups(t, target)))

    def links(self, directory: str | int) -> dict[str, str]:
        """The ``@latest``/``@best`` entries of a directory (path or inode): name → symlink
        target relative to the directory. Empty for the root and for directories with no
        checkpoint below them. A few range scans: cheap enough for every FUSE lookup."""
        out = {}
        with self.index.read() as t:
            path = self.path_in(t, directory) if isinstance(directory, int) else directory
            if not components(path):
                return {}
            groups = self._target_groups(t, path)
            if not groups:
                return {}
            base = normalized(path)
            for name, key in ((LATEST, scans.newest_key(t, groups)), (BEST, self._best_key(t, groups))):
                target = scans.path_at(t, key)
                if target:
                    out[name] = posixpath.relpath(target, base)
        return out

    # -- maintenance -----------------------------------------------------------------------------------

    def sidecar_files(self, path: str = "/") -> list[tuple[int, int]]:
        """(inode, size) of every sidecar file of a step directory below ``path`` (a read)."""
        out = []
        comps = components(path)
        with self.index.read() as t:
            stack = [(resolve(t, path), comps[-1] if comps else "")]
            while stack:
                d, dname = stack.pop()
                is_step = step_of(dname, self._pattern) is not None
                for name, child, rec in children(t, d):
                    if stat.S_ISDIR(rec.mode):
                        stack.append((child, file_name(name)))
                    elif is_step and stat.S_ISREG(rec.mode) and self.wants(name, rec.size):
                        out.append((child, rec.size))
        return out

    def scan(self, path: str = "/", read_file: Callable[[int], bytes | None] | None = None) -> ScanResult:
        """Re-derive every record below ``path`` from the tree, and (with ``read_file``, which
        returns a file's bytes by inode, or None to skip it) re-extract every sidecar file.
        For repositories written before the hooks ran."""
        result = ScanResult()
        base = normalized(path)
        with self.index.write() as t:
            self.ensure_built(t)
            found = set(self.reindex_subtree(t, resolve(t, base), base))
            for row in list(t.ckpt_all()):
                doc_path = row.doc.get("path", "")
                below = base == "/" or doc_path == base or doc_path.startswith(base + "/")
                if row.ino not in found and below:
                    t.ckpt_delete(row.ino)  # a record the hooks did not drop
                    result.dropped += 1
            todo = [
                (d, file_name(name), child, rec.size)
                for d in sorted(found)
                for name, child, rec in children(t, d)
                if stat.S_ISREG(rec.mode) and self.wants(name)
            ]
        result.checkpoints = len(found)
        if read_file is None:
            return result
        for i in range(0, len(todo), 1000):
            batch = []
            for d, name, child, size in todo[i : i + 1000]:
                data = read_file(child) if size <= MAX_SIDECAR else None
                if data is not None:
                    batch.append((d, name, extract_or_reason(name, data)))
            with self.index.write() as t:
                for d, name, extracted in batch:
                    self._apply_file(t, d, name, extracted)
            result.sidecars += len(batch)
        return result
