"""The tree as it was: versions of paths, points in time, tags, read-only views.

Every change of the tree is a numbered commit (``Txn.next_commit``): the
directory entries it changed are recorded in ``dirhist`` and the inode states it
created in ``inohist`` (index/keys.py). This module reads them back: the tree as
of any commit — which is what ``.snapshots/…`` in the mount shows and what
``restore`` and ``diff`` use — and the history of one path (``chunkfs log``).

Reading a historic file is as cheap as reading a current one: one ``set_range``
for each path component and one for the inode's version, then its manifest.
"""

from __future__ import annotations

import dataclasses
import re
import stat
from dataclasses import dataclass
from datetime import datetime

from chunkfs import clock
from chunkfs.errors import AlreadyExists, InvalidArgument, NotFound
from chunkfs.index import Index
from chunkfs.namespace.journal import Journal
from chunkfs.types import HOLE, ROOT_INODE, ChunkKind, Extent, Version, flags_kind

TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
"""Tag names: safe as a directory name in .snapshots/, never starting with '@' (and, checked
in ``tag``, not all digits: ``resolve_point`` reads a number as a commit)."""


@dataclass(frozen=True)
class LogEntry:
    """One line of ``chunkfs log``: a version, or the removal of the path."""

    commit: int
    time_ns: int
    path: str
    event: str  # "created", "written", "renamed" (moved or linked here), "removed"
    ino: int
    size: int
    blake3: str  # hex; empty when unknown or not a file
    writer_uid: int | None
    kind: str  # "file", "directory", "symlink"
    whole_at: int | None = None  # a removed directory: the last commit at which it was whole
    new_bytes: int | None = None  # a file: bytes of chunks the path's previous version lacked (None: unknown)
    stored_bytes: int | None = None  # a file: what its chunks take as stored now (each once; None: unknown)
    delta_bytes: int | None = None  # a file: raw bytes of its chunks stored as deltas (docs/tiers.md)


def _with_new_bytes(t, entries: list[LogEntry]) -> list[LogEntry]:
    """``entries`` (newest first) with each file version's ``new_bytes``: the bytes of its chunks
    that the version before it at the same path did not have (a checkpoint saved over ``latest``:
    what changed since the last save), each chunk once; and what its chunks take as stored now,
    and how many of their raw bytes are stored as deltas. Holes count as nothing; a version whose
    content gc removed stays unknown."""
    out, before = [], set()
    for e in reversed(entries):  # oldest first
        if e.kind == "file" and e.event != "removed":
            v = t.version_at(e.ino, e.commit)
            extents = t.manifest_get(v.record.manifest) if v is not None and v.record.manifest else []
            if extents is None:
                before = set()
            else:
                lengths = {x.chunk: x.length for x in extents if x.chunk != HOLE}  # a repeated chunk is stored once
                locs = [(n, t.chunk_get(c)) for c, n in lengths.items()]
                e = dataclasses.replace(
                    e, new_bytes=sum(n for c, n in lengths.items() if c not in before),
                    stored_bytes=sum(loc.stored_len for _, loc in locs if loc is not None),
                    delta_bytes=sum(n for n, loc in locs if loc is not None and flags_kind(loc.flags) == ChunkKind.DELTA),
                )  # fmt: skip
                before = set(lengths)
        out.append(e)
    return out[::-1]


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "file"


def parse_time(text: str) -> int | None:
    """An ISO-8601 time (``2026-11-30T12:00``, ``…Z``, ``…+01:00``) in ns, or None."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.astimezone()  # local time, as a person types it
    return int(when.timestamp() * 1e9)


class History:
    """Read access to past states of a repository's tree, and its tags."""

    def __init__(self, index: Index, journal: Journal | None = None) -> None:
        """``journal``: a shared repository's (namespace/journal.py): tags made now go to every node."""
        self.index = index
        self.journal = journal

    # -- points in time ---------------------------------------------------------------

    def last_commit(self) -> int:
        with self.index.read() as t:
            return t.last_commit()

    def commit_time(self, commit: int) -> int:
        with self.index.read() as t:
            ns = t.commit_time(commit)
        if ns is None:
            raise NotFound(f"commit {commit}: no such commit (the newest is {self.last_commit()})")
        return ns

    def resolve_point(self, spec: str) -> int:
        """A commit number from ``123``, ``@123``, an ISO time (``@2026-11-30T12:00``) or a tag name."""
        text = spec.removeprefix("@")
        with self.index.read() as t:
            if text.isdigit():
                commit = int(text)
                if not 0 < commit <= t.last_commit():
                    raise NotFound(f"commit {commit}: no such commit (the newest is {t.last_commit()})")
                return commit
            if not spec.startswith("@"):
                tag = t.tag_get(spec)
                if tag is not None:
                    return tag[0]
            ns = parse_time(text)
            if ns is not None:
                commit = t.commit_at_time(ns)
                if commit == 0:
                    raise NotFound(f"{text}: the repository has no commit that old")
                return commit
        raise NotFound(f"{spec}: not a commit number, an ISO time or a tag (see `chunkfs tag --list`)")

    # -- the tree as of a commit ---------------------------------------------------------

    def getattr_at(self, ino: int, commit: int) -> Version:
        with self.index.read() as t:
            v = t.version_at(ino, commit)
        if v is None:
            raise NotFound(f"inode {ino}: did not exist at commit {commit}")
        return v

    def lookup_at(self, parent: int, name: bytes, commit: int) -> Version:
        with self.index.read() as t:
            child = t.dirent_at(parent, name, commit)
            v = t.version_at(child, commit) if child else None
        if v is None:
            raise NotFound(f"{name.decode(errors='replace')}: did not exist at commit {commit}")
        return v

    def readdir_at(self, ino: int, commit: int) -> list[tuple[bytes, Version]]:
        with self.index.read() as t:
            out = []
            for name, child in t.dirents_at(ino, commit):
                v = t.version_at(child, commit)
                if v is not None:
                    out.append((name, v))
        return out

    def resolve_at(self, path: str, commit: int) -> Version:
        """The version of repository path ``path`` as of ``commit``."""
        v = self.getattr_at(ROOT_INODE, commit)
        for part in (p for p in path.strip("/").split("/") if p):
            if not stat.S_ISDIR(v.record.mode):
                raise NotFound(f"{path}: not a directory at commit {commit}")
            v = self.lookup_at(v.ino, part.encode(), commit)
        return v

    def extents(self, v: Version) -> list[Extent]:
        if not v.record.manifest:
            return []
        with self.index.read() as t:
            extents = t.manifest_get(v.record.manifest)
        if extents is None:
            raise NotFound(f"inode {v.ino} at commit {v.commit}: its content was removed by gc")
        return extents

    # -- the history of a path ------------------------------------------------------------

    def _entry_any_time(self, path: str) -> tuple[int, bytes]:
        """(parent inode, name) of ``path``, following names that no longer exist."""
        parts = [p.encode() for p in path.strip("/").split("/") if p]
        if not parts:
            raise InvalidArgument("the root has no history of its own; give a path below it")
        parent = ROOT_INODE
        with self.index.read() as t:
            for part in parts[:-1]:
                child = t.dirent_get(parent, part) or next((c for _, c in t.dirhist(parent, part) if c), None)
                if child is None:
                    raise NotFound(f"{path}: {part.decode(errors='replace')} never existed")
                parent = child
        return parent, parts[-1]

    def log(self, path: str) -> list[LogEntry]:
        """Every version of ``path`` (and its removals), newest first.

        For a file: each content committed while an inode was at this path —
        "created" (made here), "renamed" (moved or linked here, e.g. an atomic
        writer's ``os.replace``: the content it brought), "written" (committed
        here) — and "removed" when the name went away. Each entry's commit is
        when the path showed that content, so ``.snapshots/@COMMIT/PATH`` reads
        it back. For a directory: its creation and removals, and every entry
        created, moved in or removed in it.
        """
        parent, name = self._entry_any_time(path)
        entries: list[LogEntry] = []
        path = "/" + path.strip("/")
        with self.index.read() as t:
            history = t.dirhist(parent, name)  # newest first
            if not history:
                raise NotFound(f"{path}: no such path, now or in the past")
            dirs_seen = set()
            for i, (commit, child) in enumerate(history):
                if child == 0:
                    gone = history[i + 1][1] if i + 1 < len(history) else 0
                    entries.append(self._removal(t, commit, path, gone))
                    continue
                until = history[i - 1][0] if i > 0 else None  # the next change of this name
                arrived = self._arrival(t, child, commit, path, until)
                entries += arrived
                for v in t.versions(child):
                    if v.commit > commit and (until is None or v.commit < until) and v.commit not in {
                        e.commit for e in arrived
                    }:
                        entries.append(self._entry(t, v, path, "written"))
                rec = t.version_at(child, commit)
                if rec is not None and stat.S_ISDIR(rec.record.mode) and child not in dirs_seen:
                    dirs_seen.add(child)
                    entries += self._dir_changes(t, child, path)
            entries.sort(key=lambda e: (e.commit, e.event != "removed"), reverse=True)
            return _with_new_bytes(t, entries)

    def _arrival(self, t, child: int, commit: int, path: str, until: int | None = None) -> list[LogEntry]:
        """The entry for inode ``child`` getting name ``path`` at ``commit`` (the name's next
        change is at ``until``). A file created open for writing has no version until its
        content is committed (safetensors renames its file before closing it): it arrives
        with its first version, if that came before the name changed again."""
        v = t.version_at(child, commit)
        if v is None:
            later = [x for x in t.versions(child) if x.commit > commit and (until is None or x.commit < until)]
            return [self._entry(t, later[-1], path, "created")] if later else []
        if v.commit == commit:
            return [self._entry(t, v, path, "created")]
        moved = Version(v.ino, commit, v.record, v.blake3, v.writer_uid)
        return [self._entry(t, moved, path, "renamed")]

    @staticmethod
    def _entry(t, v: Version, path: str, event: str) -> LogEntry:
        rec = v.record
        blake = v.blake3.hex() if any(v.blake3) else ""
        return LogEntry(
            v.commit, t.commit_time(v.commit) or 0, path, event, v.ino, rec.size, blake, v.writer_uid, _kind(rec.mode)
        )

    def _removal(self, t, commit: int, path: str, gone: int) -> LogEntry:
        """The entry for ``path`` losing its inode ``gone`` at ``commit``. For a directory, also the
        last commit at which it was whole: ``rm -rf`` (a trainer rotating a checkpoint away) unlinks
        its files one commit each before the directory itself goes, and ``.snapshots/@N`` of a commit
        in between shows it half empty."""
        v = t.version_at(gone, commit) if gone else None
        kind = _kind(v.record.mode) if v is not None else ""
        whole = self._last_whole(t, gone, commit) if kind == "directory" else None
        return LogEntry(commit, t.commit_time(commit) or 0, path, "removed", gone, 0, "", None, kind, whole)

    @staticmethod
    def _last_whole(t, ino: int, removed_at: int) -> int:
        """The commit before the removals that emptied directory ``ino`` ahead of its own removal: the
        trailing run of removals among every change inside it, before ``removed_at``."""
        changes: list[tuple[int, bool]] = []
        todo, seen = [ino], {ino}
        while todo:
            parent = todo.pop()
            for name in t.dirhist_names(parent):
                for commit, child in t.dirhist(parent, name):
                    if commit < removed_at:
                        changes.append((commit, child == 0))
                    if child and child not in seen:
                        seen.add(child)
                        todo.append(child)
        first = removed_at
        for commit, removal in sorted(changes, reverse=True):
            if not removal:
                break
            first = commit
        return first - 1

    def _dir_changes(self, t, ino: int, path: str) -> list[LogEntry]:
        out = []
        for name in t.dirhist_names(ino):
            sub = f"{path.rstrip('/')}/{name.decode(errors='replace')}"
            changes = t.dirhist(ino, name)  # newest first
            for k, (commit, child) in enumerate(changes):
                if child == 0:
                    out.append(self._removal(t, commit, sub, changes[k + 1][1] if k + 1 < len(changes) else 0))
                else:
                    out += self._arrival(t, child, commit, sub, changes[k - 1][0] if k else None)
        return out

    # -- tags -------------------------------------------------------------------------------

    def tag(self, name: str, commit: int | None = None, path: str = "") -> int:
        """Pin ``commit`` (default: now) under ``name``; return the commit. In a shared repository a
        tag made now is made on every node (commit numbers are each node's own: a tag of a
        past commit stays this node's)."""
        if not TAG_RE.match(name) or name.isdigit():
            raise InvalidArgument(
                f"{name!r}: a tag name is letters, digits and . _ + - (not starting with @, not only digits: "
                "a number names a commit)"
            )
        with self.index.write() as t:
            if t.tag_get(name) is not None:
                raise AlreadyExists(f"tag {name}: already exists; delete it first with `chunkfs tag --delete {name}`")
            if commit is None:
                commit = t.last_commit()
                if self.journal is not None:  # every node tags its state after the changes before it
                    self.journal.record(t, "tag", path or "/", name=name, whole=not path)
            elif not 0 < commit <= t.last_commit():
                raise NotFound(f"commit {commit}: no such commit (the newest is {t.last_commit()})")
            t.tag_put(name, commit, clock.now_ns(), path)
        return commit

    def delete_tag(self, name: str) -> None:
        with self.index.write() as t:
            if not t.tag_delete(name):
                raise NotFound(f"tag {name}: no such tag (see `chunkfs tag --list`)")
            if self.journal is not None:
                self.journal.record(t, "untag", "/", name=name)

    def tags(self) -> list[tuple[str, int, int, str]]:
        """(name, commit, created ns, path) of every tag, by name."""
        with self.index.read() as t:
            return t.tags()

