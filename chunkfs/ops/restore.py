"""``chunkfs restore PATH --at POINT [--to DEST]``: bring an old version back.

With ``--to`` the file or tree as of POINT is copied out to a local path (an
export from a past commit). Without it, it becomes the current content again:
every file that differs gets a *new* version pointing at the old content — no
bytes are copied, the chunks are already stored, and the history in between
stays; removed directories are recreated, and the checkpoint metadata of
restored sidecar files (trainer_state.json, …) is extracted again. Entries
created since POINT are left alone.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from chunkfs.errors import Conflict, NotFound
from chunkfs.namespace.views import CommitView
from chunkfs.ops.transfer import Progress, TransferResult, export_tree
from chunkfs.repo import Repository
from chunkfs.types import ROOT_INODE


@dataclass
class RestoreResult:
    commit: int
    restored: int = 0  # files, symlinks and directories brought back or rewritten
    unchanged: int = 0  # already identical to the old version
    bytes: int = 0
    rewritten: list[tuple[str, int]] = field(default_factory=list)
    """(repository path, size) of the files that kept their inode and got the old content:
    a mount that has them cached must be told their new size (``chunkfs restore`` does)."""


def restore_copy(repo: Repository, path: str, commit: int, dest: Path, progress: Progress) -> TransferResult:
    """Copy ``path`` as of ``commit`` to the local path ``dest`` (its missing parents are created)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    return export_tree(repo, path, dest, progress, CommitView(repo.history, commit))


def restore_in_place(repo: Repository, path: str, commit: int) -> RestoreResult:
    """Make ``path`` (file or tree) current again as it was at ``commit``."""
    view = CommitView(repo.history, commit)
    old = view.resolve(path)
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts:
        raise NotFound("give a path below the root to restore (e.g. /llama/run1)")
    parent = ROOT_INODE
    for part in parts[:-1]:
        parent, _ = _ensure_dir(repo, parent, part.encode(), 0o755)
    result = RestoreResult(commit)
    _restore(repo, view, old, parent, parts[-1].encode(), result, "/" + "/".join(parts))
    return result


def _ensure_dir(repo: Repository, parent: int, name: bytes, mode: int) -> tuple[int, bool]:
    """The directory ``name`` in ``parent``, and whether it had to be (re)created."""
    try:
        ino, rec = repo.ns.lookup(parent, name)
        if stat.S_ISDIR(rec.mode):
            return ino, False
        repo.ns.unlink(parent, name)
    except NotFound:
        pass
    ino, _ = repo.ns.mkdir(parent, name, mode, os.getuid(), os.getgid())
    return ino, True


def _restore(
    repo: Repository, view: CommitView, old: int, parent: int, name: bytes, result: RestoreResult, path: str
) -> None:
    rec = view.attrs(old)
    if stat.S_ISDIR(rec.mode):
        ino, created = _ensure_dir(repo, parent, name, rec.mode)
        result.restored += created
        for child_name, child, _ in view.entries(old):
            _restore(repo, view, child, ino, child_name, result, f"{path}/{os.fsdecode(child_name)}")
        return
    try:
        cur, cur_rec = repo.ns.lookup(parent, name)
    except NotFound:
        cur, cur_rec = None, None
    if stat.S_ISLNK(rec.mode):
        if cur_rec is not None and stat.S_ISLNK(cur_rec.mode) and cur_rec.target == rec.target:
            result.unchanged += 1
            return
        _unlink(repo, parent, name, cur_rec)
        repo.ns.symlink(parent, name, rec.target, rec.uid, rec.gid)
        result.restored += 1
        return
    extents = view.extents(old)
    if cur_rec is not None and stat.S_ISREG(cur_rec.mode) and repo.ns.extents(cur) == extents:
        result.unchanged += 1
        return
    if cur_rec is None or not stat.S_ISREG(cur_rec.mode):
        _unlink(repo, parent, name, cur_rec)
        cur, _ = repo.ns.mknod(parent, name, rec.mode, rec.uid, rec.gid)
    else:
        result.rewritten.append((path, rec.size))
    sidecar = None
    if repo.ns.registry is not None and repo.ns.registry.wants(name, rec.size):
        content = repo.content_of(extents)  # trainer_state.json and friends: the registry re-reads them
        sidecar = content.read(0, content.size)
    repo.ns.set_content(cur, extents, blake3=view.history.getattr_at(old, view.commit).blake3, sidecar=sidecar)
    repo.ns.setattr(cur, mode=rec.mode)
    result.restored += 1
    result.bytes += rec.size


def _unlink(repo: Repository, parent: int, name: bytes, rec) -> None:
    """Make room for the restored entry; a directory in the way is not removed."""
    if rec is None:
        return
    if stat.S_ISDIR(rec.mode):
        raise Conflict(
            f"{name.decode(errors='replace')}: is a directory now; move it away to restore the old file"
        )
    repo.ns.unlink(parent, name)
