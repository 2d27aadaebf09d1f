"""The directory tree: inodes, directory entries, symlinks, hard links, xattrs, file contents.

Every operation is one LMDB transaction, so the tree is consistent after any
crash: a rename is atomic (the old and new entries change in the same commit),
and a file's content changes only by pointing its inode at a new manifest.
Permission checks are the kernel's (``default_permissions``); this layer checks
only what makes a tree a tree (no entry twice, no directory inside itself, no
removing a non-empty directory).

Inodes whose last name is gone but that someone still references — a process
holding them open, or the kernel, which may use an inode number it looked up
until it sends FORGET — are kept until the last ``release`` (POSIX
unlink-while-open semantics, and an ``open`` racing a ``rename`` over the
file); ``forget_orphans`` removes the ones a crashed daemon left behind.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from collections import Counter

from chunkfs import clock
from chunkfs.config import RegistrySettings
from chunkfs.errors import (
    AlreadyExists,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NoAttribute,
    NotADirectory,
    NotEmpty,
    NotFound,
)
from chunkfs.index import Index, Txn
from chunkfs.namespace import journal, paths
from chunkfs.namespace.registry import Registry
from chunkfs.namespace.registry.keypath import run_of
from chunkfs.types import NAME_MAX, ROOT_INODE, Extent, InodeRecord

NO_HASH = bytes(32)
"""The whole-file hash of a version that has none (directories, symlinks, unknown)."""



def _name(name: bytes) -> bytes:
    if not name or b"/" in name or name in (b".", b".."):
        raise InvalidArgument(f"invalid file name {name!r}")
    if len(name) > NAME_MAX:
        raise NameTooLong(f"file name too long (over {NAME_MAX} bytes): {name[:40]!r}…")
    return name


class Namespace:
    """The file tree of one repository, stored in the index."""

    def __init__(self, index: Index, registry: Registry | None = None, *, keep_nameless: bool = False) -> None:
        """``keep_nameless``: an inode that loses its last name is kept, not dropped — for a
        process writing beside the repository's maintainer (``Repository(shared=True)``), which
        cannot know whether the mount holds that inode open; the maintainer drops it
        (``forget_orphans`` at its next open)."""
        self.index = index
        self.registry = registry
        self.keep_nameless = keep_nameless
        # a shared repository's journal of changes (docs/multinode.md); the registry writes it too
        self.journal = registry.journal if registry is not None else journal.Journal(index)
        self._refs = Counter()  # inode → references (open handles, kernel lookups)
        self._lock = threading.Lock()
        with index.read() as t:
            has_root = t.inode_get(ROOT_INODE) is not None
        if not has_root:
            now = clock.now_ns()
            root = InodeRecord(stat.S_IFDIR | 0o755, 0, 0, 2, 0, now, now, now)
            with index.write() as t:
                t.inode_put(ROOT_INODE, root)
                t.version_put(ROOT_INODE, t.commit, root, NO_HASH, 0)

    # -- reading --------------------------------------------------------------------

    def getattr(self, ino: int) -> InodeRecord:
        with self.index.read() as t:
            return self._get(t, ino)

    @staticmethod
    def _get(t: Txn, ino: int) -> InodeRecord:
        rec = t.inode_get(ino)
        if rec is None:
            raise NotFound(f"inode {ino}: no such file")
        return rec

    def lookup(self, parent: int, name: bytes) -> tuple[int, InodeRecord]:
        if len(name) > NAME_MAX:  # no entry can have it: say why (unlink, chmod, rename… look it up first)
            raise NameTooLong(f"file name too long (over {NAME_MAX} bytes): {name[:40]!r}…")
        with self.index.read() as t:
            self._dir(t, parent)
            child = t.dirent_get(parent, name)
            if child is None:
                raise NotFound(f"{name.decode(errors='replace')}: no such file or directory")
            return child, self._get(t, child)

    def _dir(self, t: Txn, ino: int) -> InodeRecord:
        rec = self._get(t, ino)
        if not stat.S_ISDIR(rec.mode):
            raise NotADirectory(f"inode {ino}: not a directory")
        return rec

    def resolve(self, path: str) -> int:
        """The inode of a repository path (``/a/b``); symlinks are not followed."""
        ino = ROOT_INODE
        for part in path.strip("/").split("/"):
            if part:
                ino, _ = self.lookup(ino, os.fsencode(part))
        return ino

    def readdir(self, ino: int, after: bytes | None = None, limit: int = 1 << 30):
        """(name, inode, record) of a directory's entries in name order, after ``after``."""
        out = []
        with self.index.read() as t:
            self._dir(t, ino)
            for name, child in t.dirents(ino, after):
                out.append((name, child, self._get(t, child)))
                if len(out) >= limit:
                    break
        return out

    def readlink(self, ino: int) -> bytes:
        rec = self.getattr(ino)
        if not stat.S_ISLNK(rec.mode):
            raise InvalidArgument(f"inode {ino}: not a symbolic link")
        return rec.target

    def extents(self, ino: int) -> list[Extent]:
        with self.index.read() as t:
            rec = self._get(t, ino)
            if stat.S_ISDIR(rec.mode):
                raise IsADirectory(f"inode {ino}: is a directory")
            return t.manifest_get(rec.manifest) or [] if rec.manifest else []

    def parent_of(self, ino: int) -> int:
        """The directory holding ``ino`` (the root is its own parent)."""
        if ino == ROOT_INODE:
            return ROOT_INODE
        with self.index.read() as t:
            links = t.parents(ino)
        if not links:
            raise NotFound(f"inode {ino}: has no parent (unlinked)")
        return links[0][0]

    def names_of(self, ino: int) -> list[tuple[int, bytes]]:
        """Every (parent, name) that links ``ino`` (hard links: several; none once unlinked)."""
        with self.index.read() as t:
            return t.parents(ino)

    def path_of(self, ino: int) -> str:
        """One path of ``ino`` (the first of its names), '/' for the root."""
        with self.index.read() as t:
            path = paths.path_in(t, ino)
        return "/<unlinked>" if path is None else path

    def group_of(self, ino: int) -> str:
        """The pack group of a file: its run directory (the parent of its checkpoint directory,
        e.g. ``/llama/8b/lora/run1`` for ``…/run1/checkpoint-500/x``), or its own directory when
        the path has no checkpoint level — by the registry's ``step_pattern`` (``Registry.run_of``),
        so that tiering and the registry agree on what a run is."""
        path = self.path_of(ino)
        if self.registry is not None:
            return self.registry.run_of(path)
        return run_of(path, re.compile(RegistrySettings().step_pattern))

    # -- creating -------------------------------------------------------------------

    def _create(self, parent: int, name: bytes, rec: InodeRecord, *, versioned: bool = True) -> tuple[int, InodeRecord]:
        """A new inode named ``name`` in ``parent``. ``versioned``: its first version is recorded
        now; a file created open for writing gets its first version when its content is
        committed (``set_content``), so that history never shows it before it was complete."""
        name = _name(name)
        with self.index.write() as t:
            prec = self._dir(t, parent)
            if t.dirent_get(parent, name) is not None:
                raise AlreadyExists(f"{name.decode(errors='replace')}: already exists")
            ino = t.next_inode()
            t.inode_put(ino, rec)
            t.dirent_put(parent, name, ino)
            self.journal.record(
                t, "create", paths.child_path(t, parent, name), mode=rec.mode, uid=rec.uid, gid=rec.gid,
                rdev=rec.rdev, target=os.fsdecode(rec.target), versioned=versioned,
            )  # fmt: skip
            if versioned:
                t.version_put(ino, t.commit, rec, NO_HASH, rec.uid)
            if self.registry is not None and stat.S_ISDIR(rec.mode):
                self.registry.on_dir_changed(t, ino)
            prec.mtime_ns = prec.ctime_ns = rec.ctime_ns
            if stat.S_ISDIR(rec.mode):
                prec.nlink += 1
            t.inode_put(parent, prec)
        return ino, rec

    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> tuple[int, InodeRecord]:
        now = clock.now_ns()
        rec = InodeRecord(stat.S_IFDIR | (mode & 0o7777), uid, gid, 2, 0, now, now, now)
        return self._create(parent, name, rec)

    def makedirs(self, path: str, uid: int, gid: int, mode: int = 0o755) -> int:
        """The inode of directory ``path``, creating missing levels (``mkdir -p``; another
        process creating the same level at once is no error)."""
        ino = ROOT_INODE
        for part in (p for p in path.strip("/").split("/") if p):
            try:
                ino, _ = self.lookup(ino, os.fsencode(part))
            except NotFound:
                try:
                    ino, _ = self.mkdir(ino, os.fsencode(part), mode, uid, gid)
                except AlreadyExists:
                    ino, _ = self.lookup(ino, os.fsencode(part))
        return ino

    def mknod(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0, *, versioned: bool = True):
        """A regular file (or another non-directory node) with no content. ``versioned=False``
        for a file created open for writing: no version until its content is committed."""
        if stat.S_ISDIR(mode):
            raise InvalidArgument("use mkdir for directories")
        if not stat.S_IFMT(mode):
            mode |= stat.S_IFREG
        now = clock.now_ns()
        rec = InodeRecord(mode, uid, gid, 1, 0, now, now, now, rdev)
        return self._create(parent, name, rec, versioned=versioned)

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int):
        now = clock.now_ns()
        rec = InodeRecord(stat.S_IFLNK | 0o777, uid, gid, 1, len(target), now, now, now, target=target)
        return self._create(parent, name, rec)

    def link(self, ino: int, parent: int, name: bytes) -> InodeRecord:
        name = _name(name)
        with self.index.write() as t:
            rec = self._get(t, ino)
            if stat.S_ISDIR(rec.mode):
                raise IsADirectory("hard links to directories are not allowed")
            prec = self._dir(t, parent)
            if t.dirent_get(parent, name) is not None:
                raise AlreadyExists(f"{name.decode(errors='replace')}: already exists")
            self.journal.record(t, "link", paths.path_in(t, ino), to=paths.child_path(t, parent, name))
            t.dirent_put(parent, name, ino)
            now = clock.now_ns()
            rec.nlink += 1
            rec.ctime_ns = prec.mtime_ns = prec.ctime_ns = now
            t.inode_put(ino, rec)
            t.inode_put(parent, prec)
        return rec

    # -- removing ---------------------------------------------------------------------

    def unlink(self, parent: int, name: bytes) -> None:
        with self.index.write() as t:
            self._dir(t, parent)
            child = t.dirent_get(parent, name)
            if child is None:
                raise NotFound(f"{name.decode(errors='replace')}: no such file")
            rec = self._get(t, child)
            if stat.S_ISDIR(rec.mode):
                raise IsADirectory(f"{name.decode(errors='replace')}: is a directory")
            self._unlink_entry(t, parent, name, child, rec)

    def rmdir(self, parent: int, name: bytes) -> None:
        with self.index.write() as t:
            self._dir(t, parent)
            child = t.dirent_get(parent, name)
            if child is None:
                raise NotFound(f"{name.decode(errors='replace')}: no such directory")
            rec = self._dir(t, child)
            if t.has_dirents(child):
                raise NotEmpty(f"{name.decode(errors='replace')}: directory not empty")
            self._unlink_entry(t, parent, name, child, rec)

    def _unlink_entry(self, t: Txn, parent: int, name: bytes, child: int, rec: InodeRecord, *, replaced=False) -> None:
        """``replaced``: the entry goes because a rename puts another over it (journaled as that rename)."""
        if not replaced:
            self.journal.record(t, "remove", paths.child_path(t, parent, name))
        t.dirent_delete(parent, name)
        if self.registry is not None:
            if stat.S_ISDIR(rec.mode):
                self.registry.on_dir_removed(t, child)
            else:
                self.registry.on_file_removed(t, parent, name)
        now = clock.now_ns()
        prec = self._get(t, parent)
        prec.mtime_ns = prec.ctime_ns = now
        if stat.S_ISDIR(rec.mode):
            prec.nlink -= 1
            rec.nlink = 0
        else:
            rec.nlink -= 1
        t.inode_put(parent, prec)
        rec.ctime_ns = now
        if rec.nlink > 0 or self._refs[child] or self.keep_nameless:
            t.inode_put(child, rec)
        else:
            self._drop(t, child, rec)

    @staticmethod
    def _drop(t: Txn, ino: int, rec: InodeRecord) -> None:
        """Forget an inode that has no name and no user left. Its versions and their
        manifests stay: history and snapshots still show it until gc drops them."""
        for xname in t.xattrs(ino):
            t.xattr_delete(ino, xname)
        t.inode_delete(ino)

    def rename(self, old_parent: int, old: bytes, new_parent: int, new: bytes, *, noreplace=False, exchange=False):
        """Atomically move an entry, replacing the target if there is one (POSIX rename)."""
        new = _name(new)
        with self.index.write() as t:
            self._dir(t, old_parent)
            self._dir(t, new_parent)
            child = t.dirent_get(old_parent, old)
            if child is None:
                raise NotFound(f"{old.decode(errors='replace')}: no such file or directory")
            rec = self._get(t, child)
            if stat.S_ISDIR(rec.mode) and self._is_ancestor(t, child, new_parent):
                raise InvalidArgument("cannot move a directory into itself")
            target = t.dirent_get(new_parent, new)
            if target == child:
                return
            self.journal.record(
                t, "rename", paths.child_path(t, old_parent, old), to=paths.child_path(t, new_parent, new),
                exchange=exchange,
            )  # fmt: skip
            if exchange:
                if target is None:
                    raise NotFound(f"{new.decode(errors='replace')}: no such file or directory")
                t.dirent_delete(old_parent, old)
                t.dirent_delete(new_parent, new)
                t.dirent_put(old_parent, old, target)
                t.dirent_put(new_parent, new, child)
                self._moved(t, child, rec)
                self._moved(t, target, self._get(t, target))
                return
            if target is not None:
                if noreplace:
                    raise AlreadyExists(f"{new.decode(errors='replace')}: already exists")
                trec = self._get(t, target)
                if stat.S_ISDIR(trec.mode):
                    if not stat.S_ISDIR(rec.mode):
                        raise IsADirectory(f"{new.decode(errors='replace')}: is a directory")
                    if t.has_dirents(target):
                        raise NotEmpty(f"{new.decode(errors='replace')}: directory not empty")
                elif stat.S_ISDIR(rec.mode):
                    raise NotADirectory(f"{new.decode(errors='replace')}: not a directory")
                self._unlink_entry(t, new_parent, new, target, trec, replaced=True)
            t.dirent_delete(old_parent, old)
            t.dirent_put(new_parent, new, child)
            now = clock.now_ns()
            if stat.S_ISDIR(rec.mode) and old_parent != new_parent:
                for ino, delta in ((old_parent, -1), (new_parent, 1)):
                    p = self._get(t, ino)
                    p.nlink += delta
                    t.inode_put(ino, p)
            for ino in {old_parent, new_parent}:
                p = self._get(t, ino)
                p.mtime_ns = p.ctime_ns = now
                t.inode_put(ino, p)
            rec.ctime_ns = now
            t.inode_put(child, rec)
            if self.registry is not None and not stat.S_ISDIR(rec.mode):
                self.registry.on_file_removed(t, old_parent, old)
            self._moved(t, child, rec)

    def _moved(self, t: Txn, ino: int, rec: InodeRecord) -> None:
        """A directory got a new path: its checkpoint records (and those below) follow."""
        if self.registry is not None and stat.S_ISDIR(rec.mode):
            self.registry.on_dir_changed(t, ino)

    def _is_ancestor(self, t: Txn, ancestor: int, ino: int) -> bool:
        while ino != ROOT_INODE:
            if ino == ancestor:
                return True
            links = t.parents(ino)
            if not links:
                return False
            ino = links[0][0]
        return ancestor == ROOT_INODE

    # -- references (open handles, kernel lookups) ---------------------------------------

    def hold(self, ino: int) -> None:
        """Someone references ``ino``: keep it even if its last name is removed."""
        with self._lock:
            self._refs[ino] += 1

    def held(self, ino: int) -> bool:
        """Whether anyone still references ``ino`` (``hold``)."""
        with self._lock:
            return self._refs[ino] > 0

    def release(self, ino: int, n: int = 1) -> None:
        self.release_many([(ino, n)])

    def release_many(self, refs: list[tuple[int, int]]) -> None:
        """Drop ``n`` references of each inode; an inode with no name and no reference left goes."""
        unreferenced = []
        with self._lock:
            for ino, n in refs:
                left = self._refs[ino] - n
                if left > 0:
                    self._refs[ino] = left
                else:
                    self._refs.pop(ino, None)
                    unreferenced.append(ino)
        if not unreferenced:
            return
        with self.index.read() as t:  # most have names: no write transaction (an fdatasync) for them
            nameless = [ino for ino in unreferenced if (r := t.inode_get(ino)) is not None and r.nlink == 0]
        if nameless:
            with self.index.write() as t:
                for ino in nameless:
                    rec = t.inode_get(ino)
                    if rec is not None and rec.nlink == 0 and not self._refs[ino]:
                        self._drop(t, ino, rec)

    def drop_dangling_links(self) -> int:
        """Remove directory entries whose parent or child inode is gone, and reverse records
        without their entry (an index salvaged from a damaged one); return how many."""
        with self.index.write() as t:
            bad = [(p, n, c) for p, n, c in t.dirents_all() if t.inode_get(p) is None or t.inode_get(c) is None]
            bad += [(p, n, c) for c, p, n in t.parents_all() if t.dirent_get(p, n) != c]
            for parent, name, child in bad:
                t.link_delete(parent, name, child)
        return len(bad)

    def forget_orphans(self) -> int:
        """Drop inodes with no name left (a crashed daemon held them open)."""
        with self.index.write() as t:
            orphans = [(i, r) for i, r in t.inodes() if r.nlink == 0 and i != ROOT_INODE]
            for ino, rec in orphans:
                self._drop(t, ino, rec)
        return len(orphans)

    # -- changing ---------------------------------------------------------------------

    def setattr(self, ino: int, *, mode=None, uid=None, gid=None, atime_ns=None, mtime_ns=None) -> InodeRecord:
        with self.index.write() as t:
            rec = self._get(t, ino)
            if mode is not None:
                rec.mode = stat.S_IFMT(rec.mode) | (mode & 0o7777)
            if uid is not None:
                rec.uid = uid
            if gid is not None:
                rec.gid = gid
            if atime_ns is not None:
                rec.atime_ns = atime_ns
            if mtime_ns is not None:
                rec.mtime_ns = mtime_ns
            rec.ctime_ns = clock.now_ns()
            t.inode_put(ino, rec)
            self.journal.record(
                t, "setattr", paths.path_in(t, ino), mode=mode, uid=uid, gid=gid, atime_ns=atime_ns, mtime_ns=mtime_ns
            )
        return rec

    def set_content(
        self,
        ino: int,
        extents: list[Extent],
        mtime_ns: int | None = None,
        *,
        blake3: bytes | None = None,
        writer_uid: int | None = None,
        sidecar: bytes | None = None,
    ) -> InodeRecord:
        """Point a file at new content (a new manifest): one transaction, one new version.

        The previous manifest is kept: the previous version still names it.
        ``blake3`` is the whole-file hash (None: not known), ``writer_uid`` who wrote the content;
        ``sidecar`` is the content itself when the registry wants it
        (``Registry.wants``: trainer_state.json and friends) to extract metadata.
        """
        with self.index.write() as t:
            rec = self._get(t, ino)
            rec.manifest = t.manifest_put(extents) if extents else 0
            rec.size = sum(e.length for e in extents)
            rec.mtime_ns = rec.ctime_ns = mtime_ns if mtime_ns is not None else clock.now_ns()
            t.inode_put(ino, rec)
            t.version_put(ino, t.commit, rec, blake3 or NO_HASH, rec.uid if writer_uid is None else writer_uid)
            self.journal.record(
                t, "content", paths.path_in(t, ino), extents=journal.encode_extents(extents),
                mtime_ns=rec.mtime_ns, blake3=(blake3 or NO_HASH).hex(), writer_uid=writer_uid,
            )  # fmt: skip
            if self.registry is not None:
                for parent, name in t.parents(ino):
                    self.registry.on_file_committed(parent, name, sidecar, txn=t)
        return rec

    def sidecar_name(self, ino: int) -> bytes | None:
        """The name of file ``ino`` if the registry wants its content at commit (``set_content``)."""
        if self.registry is None:
            return None
        with self.index.read() as t:
            names = [name for _, name in t.parents(ino)]
        return next((n for n in names if self.registry.wants(n)), None)

    # -- extended attributes --------------------------------------------------------------

    def getxattr(self, ino: int, name: bytes) -> bytes:
        with self.index.read() as t:
            self._get(t, ino)
            value = t.xattr_get(ino, name)
        if value is None:
            raise NoAttribute(f"{name.decode(errors='replace')}: no such attribute")
        return value

    def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        with self.index.write() as t:
            rec = self._get(t, ino)
            t.xattr_put(ino, name, value)
            self.journal.record(t, "setxattr", paths.path_in(t, ino), name=os.fsdecode(name), value=bytes(value).hex())
            if self.registry is not None:
                self.registry.on_xattr(t, ino, name, value)
            rec.ctime_ns = clock.now_ns()
            t.inode_put(ino, rec)

    def listxattr(self, ino: int) -> list[bytes]:
        with self.index.read() as t:
            self._get(t, ino)
            return t.xattrs(ino)

    def removexattr(self, ino: int, name: bytes) -> None:
        with self.index.write() as t:
            self._get(t, ino)
            if not t.xattr_delete(ino, name):
                raise NoAttribute(f"{name.decode(errors='replace')}: no such attribute")
            self.journal.record(t, "removexattr", paths.path_in(t, ino), name=os.fsdecode(name))
            if self.registry is not None:
                self.registry.on_xattr(t, ino, name, None)

    def counts(self) -> tuple[int, int]:
        """(inodes, bytes of file content as users see it)."""
        with self.index.read() as t:
            files = [r for _, r in t.inodes()]
        return len(files), sum(r.size for r in files if stat.S_ISREG(r.mode))
