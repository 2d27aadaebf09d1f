"""``chunkfs import`` / ``chunkfs export``: copy trees in and out without FUSE.

Import streams each file through the same ``FileContent`` writer the mount uses,
so a checkpoint imported and a checkpoint written through the mount are chunked
identically. Modes, owners (when run as root), times and symlinks are kept.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chunkfs.errors import AlreadyExists, IsADirectory, NotFound
from chunkfs.namespace.views import CurrentView, TreeView
from chunkfs.repo import Repository
from chunkfs.types import HOLE

BLOCK = 1 << 20
Progress = Callable[[int], None]
"""Called with the number of bytes just copied."""


@dataclass
class TransferResult:
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    bytes: int = 0


def source_size(src: Path) -> int:
    """Bytes of regular files under ``src`` (for a progress bar's total)."""
    if src.is_file():
        return src.stat().st_size
    return sum(p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink())


def import_tree(repo: Repository, src: Path, dest: str, progress: Progress = lambda n: None) -> TransferResult:
    """Copy local file or tree ``src`` to repository path ``dest``.

    As with ``cp -r SRC DEST``: if ``dest`` is an existing directory, ``src`` is
    copied into it under its own name; otherwise it is created as ``dest``.
    """
    result = TransferResult()
    src = Path(src)
    if not src.exists() and not src.is_symlink():
        raise NotFound(f"{src}: no such file or directory")
    dest = "/" + dest.strip("/")
    try:
        if stat.S_ISDIR(repo.ns.getattr(repo.ns.resolve(dest)).mode):
            dest = dest.rstrip("/") + "/" + src.name
    except NotFound:
        pass
    parent_path, name = dest.rsplit("/", 1)
    parent = repo.ns.makedirs(parent_path, os.getuid(), os.getgid())
    _import_one(repo, src, parent, os.fsencode(name), result, progress)
    repo.packs.seal_all()
    repo.flush()
    return result


def _import_one(repo, src: Path, parent: int, name: bytes, result: TransferResult, progress: Progress) -> None:
    st = src.lstat()
    uid, gid = (st.st_uid, st.st_gid) if os.getuid() == 0 else (os.getuid(), os.getgid())
    if stat.S_ISDIR(st.st_mode):
        try:
            ino, _ = repo.ns.mkdir(parent, name, st.st_mode, uid, gid)
        except AlreadyExists:
            ino, _ = repo.ns.lookup(parent, name)
        result.directories += 1
        for child in sorted(os.listdir(src)):
            _import_one(repo, src / child, ino, os.fsencode(child), result, progress)
        repo.ns.setattr(ino, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns)
    elif stat.S_ISLNK(st.st_mode):
        _replace(repo, parent, name)
        repo.ns.symlink(parent, name, os.fsencode(os.readlink(src)), uid, gid)
        result.symlinks += 1
    elif stat.S_ISREG(st.st_mode):
        try:
            ino, rec = repo.ns.lookup(parent, name)
            if stat.S_ISDIR(rec.mode):
                raise IsADirectory(f"{src}: cannot replace directory {os.fsdecode(name)} with a file")
        except NotFound:
            ino, _ = repo.ns.mknod(parent, name, st.st_mode, uid, gid)
        content = repo.file_content(ino)
        content.truncate(0)
        with open(src, "rb") as f:
            offset = 0
            while block := f.read(BLOCK):
                content.write(offset, block)
                offset += len(block)
                progress(len(block))
        repo.commit_file(ino, content, mtime_ns=st.st_mtime_ns)
        repo.ns.setattr(ino, mode=st.st_mode, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns)
        result.files += 1
        result.bytes += offset


def _replace(repo: Repository, parent: int, name: bytes) -> None:
    try:
        repo.ns.unlink(parent, name)
    except NotFound:
        pass


def export_tree(
    repo: Repository, src: str, dest: Path, progress: Progress = lambda n: None, view: TreeView | None = None
) -> TransferResult:
    """Copy repository path ``src`` (file or tree) to local path ``dest``.

    ``view`` picks the tree to copy from: the current one by default, or the
    tree as of a past commit (``namespace.views.CommitView``).
    """
    result = TransferResult()
    view = view or CurrentView(repo.ns)
    ino = view.resolve(src)
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / (src.rstrip("/").rsplit("/", 1)[-1] or "root")
    _export_one(repo, view, ino, dest, result, progress)
    return result


def _export_one(repo: Repository, view: TreeView, ino: int, dest: Path, result: TransferResult, progress: Progress) -> None:
    rec = view.attrs(ino)
    if stat.S_ISDIR(rec.mode):
        dest.mkdir(exist_ok=True)
        result.directories += 1
        for name, child, _ in view.entries(ino):
            _export_one(repo, view, child, dest / os.fsdecode(name), result, progress)
        os.chmod(dest, stat.S_IMODE(rec.mode))
    elif stat.S_ISLNK(rec.mode):
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        os.symlink(os.fsdecode(rec.target), dest)
        result.symlinks += 1
        return
    else:
        extents = view.extents(ino)
        content = repo.content_of(extents)
        tmp = dest.with_name(dest.name + ".chunkfs-export")
        try:
            with open(tmp, "wb") as f:
                offset = 0
                for extent in extents:
                    if extent.chunk == HOLE:
                        f.seek(extent.length, os.SEEK_CUR)  # a sparse file stays sparse (cp --sparse)
                    else:
                        f.write(content.read(offset, extent.length))
                    offset += extent.length
                    progress(extent.length)
                f.truncate(offset)
            os.replace(tmp, dest)
        except BaseException:  # corrupt chunk, full disk, ^C: leave no partial file behind
            tmp.unlink(missing_ok=True)
            raise
        os.chmod(dest, stat.S_IMODE(rec.mode))
        result.files += 1
        result.bytes += offset
    os.utime(dest, ns=(rec.atime_ns, rec.mtime_ns))
