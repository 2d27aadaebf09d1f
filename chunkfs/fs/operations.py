"""The FUSE protocol adapter: kernel requests → library calls, errors → errno.

No storage logic lives here. Directory operations go to ``Namespace``; file
data to ``OpenFiles``. Anything that may block (file data, index commits,
which fdatasync) runs in a worker thread through ``_blocking``, so the trio
loop keeps answering other requests; cheap index reads (LMDB is memory-mapped)
run on the loop. Every ``ChunkfsError`` becomes a ``FUSEError`` with its errno
and one log line naming the object (``_errors``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import os
import stat

import pyfuse3
import trio

from chunkfs.errors import ChunkfsError, NameTooLong, NoAttribute, NotFound, ReadOnly
from chunkfs.fs.notify import Notifier
from chunkfs.fs.virtual import Virtual
from chunkfs.openfiles import OpenFiles
from chunkfs.repo import Repository
from chunkfs.types import NAME_MAX, InodeRecord

log = logging.getLogger(__name__)

ATTR_TIMEOUT = 1.0
"""Seconds the kernel may cache attributes and names (admin commands change them too)."""

SNAPSHOT_TIMEOUT = 60.0
"""Snapshot contents never change: the kernel may cache them longer."""

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR

WORKERS = 8
"""Worker threads for blocking calls: enough to overlap hashing, pack writes and index commits."""


READDIR_BATCH = 256
"""Entries read from the index at a time while a readdir reply is filled."""


@dataclasses.dataclass
class _Listing:
    """An open directory handle: the names returned so far (a position is an index into them),
    or, for a snapshot directory, its whole fixed listing."""

    ino: int
    names: list[bytes] = dataclasses.field(default_factory=list)
    virtual: list[tuple[bytes, int]] | None = None


def _errors(fn):
    """Translate library errors into errno for the kernel, with a log line."""

    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except ChunkfsError as e:
            if e.errno not in (errno.ENOENT, errno.EEXIST, errno.ENODATA, errno.ENOTEMPTY, errno.EROFS, errno.ENAMETOOLONG, errno.EFBIG):
                log.error("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(e.errno) from None
        except OSError as e:
            log.error("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("%s: internal error", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class ChunkfsOperations(pyfuse3.Operations):
    """pyfuse3 handlers for one mounted repository."""

    enable_writeback_cache = True

    def __init__(self, repo: Repository, *, writers: int = 0) -> None:
        """``writers``: engine worker processes for the files being written (openfiles.py)."""
        super().__init__()
        self.repo = repo
        self.ns = repo.ns
        self.files = OpenFiles(repo, processes=writers)
        self.notifier = Notifier()  # started with the FUSE session (fs/mount.py), stopped by close()
        self.files.on_failed = self._forget_failed
        self.virtual = Virtual(repo.snapshots)
        self._seen: dict[int, int] = {}  # inode → manifest the kernel last got from this mount
        # file inode → the (parent, name) entries the kernel got for it: names another process
        # renamed or removed since stay in the kernel's cache, and each holds the inode there
        self._kernel_names: dict[int, set[tuple[int, bytes]]] = {}
        # file inode → generation the kernel gets in entries: raised when another process
        # changed a file nobody has open here (kept after FORGET: the kernel may hold either)
        self._generation: dict[int, int] = {}
        self._limiter = trio.CapacityLimiter(WORKERS)
        self._dirs: dict[int, _Listing] = {}
        self._next_dir = 0
        self.initialized = trio.Event()  # set by ``init``: fs/mount.py waits for it to report the mount ready

    def init(self) -> None:
        """pyfuse3 calls this on the trio thread while it answers the kernel's FUSE INIT, just
        before sending the reply (which sets the mount's read-ahead: fs/mount.py)."""
        self.initialized.set()

    def _forget_failed(self, ino: int) -> None:
        """A write the kernel had taken into its page cache was not stored: have it drop those
        pages and the size they made, so that readers see what chunkfs holds."""
        self._forget_file(ino)

    def _forget_file(self, ino: int) -> None:
        """Have the kernel drop ``ino``'s pages, attributes and every entry it holds for it.

        With the writeback cache the kernel keeps its own size of a cached file whatever a
        reply says, so the inode must leave its cache altogether — and it stays while any
        entry names it: not only the file's names now, but also one the kernel got before
        another process renamed the file (a DCP rank's ``.metadata.tmp``, renamed to
        ``.metadata``: a lookup of the new name would find the cached inode with its old,
        empty size)."""
        names = set(self.ns.names_of(ino)) | self._kernel_names.get(ino, set())
        self.notifier.forget_file(ino, sorted(names))

    def _note_name(self, parent: int, name: bytes, ino: int, rec: InodeRecord) -> None:
        """The kernel gets the entry ``(parent, name)`` of ``ino`` (``_forget_file`` drops it)."""
        if stat.S_ISREG(rec.mode):
            self._kernel_names.setdefault(ino, set()).add((parent, name))

    def _named(self, parent: int, name: bytes, ino: int, rec: InodeRecord) -> pyfuse3.EntryAttributes:
        """``_entry`` for a reply that gives the kernel the entry ``(parent, name)``."""
        self._note_name(parent, name, ino, rec)
        return self._entry(ino, rec)

    def _notice_changes(self, ino: int, manifest: int) -> None:
        """A file another process committed (``chunkfs import`` while mounted) since this mount
        last handed the kernel its attributes: with the writeback cache the kernel trusts its
        own size and pages over ours, so have it forget them (and the names, so that a lookup
        brings the inode back afresh once nobody holds it open)."""
        changed = self.files.changed_elsewhere(ino, manifest)
        if changed is not None:  # open here: the kernel's inode is in use and keeps its old size
            if changed:
                self._forget_file(ino)  # its pages; `_seen` stays, for the first reply after it closes
            return
        if self._seen.get(ino, manifest) != manifest and self.files.committed_here(ino) != manifest:
            # The invalidations below are sent after this reply, and the kernel may act on
            # the reply first (a lookup by the reader that opens the file next). A new
            # generation makes the kernel replace its cached inode, size and pages, while it
            # takes this very reply — safe only with no I/O on it (it fails from then on).
            self._generation[ino] = self._generation.get(ino, 0) + 1
            self._forget_file(ino)
        self._seen[ino] = manifest

    async def _blocking(self, fn, *args):
        return await trio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)

    def _attrs(self, ino: int, rec: InodeRecord) -> pyfuse3.EntryAttributes:
        if stat.S_ISREG(rec.mode):
            self._notice_changes(ino, rec.manifest)
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.generation = self._generation.get(ino, 0)
        a.entry_timeout = a.attr_timeout = ATTR_TIMEOUT
        a.st_mode = rec.mode
        a.st_nlink = rec.nlink
        a.st_uid = rec.uid
        a.st_gid = rec.gid
        a.st_rdev = rec.rdev
        size = self.files.size(ino)
        a.st_size = rec.size if size is None else size
        a.st_blksize = 1 << 20
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = rec.atime_ns
        a.st_mtime_ns = rec.mtime_ns
        a.st_ctime_ns = rec.ctime_ns
        return a

    def _virtual_attrs(self, ino: int, rec: InodeRecord) -> pyfuse3.EntryAttributes:
        """Attributes of a snapshot entry or query link (``fs/virtual.py``): never cached for
        the links (``@latest`` must follow the next checkpoint at once), longer for snapshots —
        but not the names in ``.snapshots`` itself: tags come and go, and ``@TIME`` may name a
        newer commit next time."""
        a = self._attrs(ino, rec)
        timeout = 0.0 if self.virtual.is_link(ino) else SNAPSHOT_TIMEOUT
        a.entry_timeout = a.attr_timeout = timeout
        if self.virtual.is_point(ino):
            a.entry_timeout = 0.0
        return a

    def _virtual_entry(self, ino: int, rec: InodeRecord) -> pyfuse3.EntryAttributes:
        """``_virtual_attrs`` for a reply that gives the kernel a reference (``Virtual.hold``)."""
        self.virtual.hold([ino])
        return self._virtual_attrs(ino, rec)

    def _read_only(self, *inodes: int, name: tuple[int, bytes] | None = None) -> None:
        """Refuse changes inside snapshots, and to the names the mount reserves."""
        if any(Virtual.owns(i) for i in inodes):
            raise ReadOnly("snapshots and query links are read-only")
        if name is not None and self.virtual.reserved(*name) is not None:
            raise ReadOnly(f"{name[1].decode()}: reserved for snapshots")

    def _entry(self, ino: int, rec: InodeRecord) -> pyfuse3.EntryAttributes:
        """Attributes for a reply that gives the kernel a reference to ``ino``.

        The kernel may send requests for that inode number until it FORGETs it
        (an ``open`` right after a ``rename`` replaced the file, say), so the
        namespace keeps the inode, even once nameless, until then.
        """
        self.ns.hold(ino)
        return self._attrs(ino, rec)

    # -- names and attributes -------------------------------------------------------------

    @_errors
    async def lookup(self, parent_inode, name, ctx=None):
        if len(name) > NAME_MAX:
            raise NameTooLong(f"file name too long (over {NAME_MAX} bytes): {name[:40]!r}…")
        if Virtual.owns(parent_inode):
            return self._virtual_entry(*self.virtual.lookup(parent_inode, name))
        if name == b".":
            return self._entry(parent_inode, self.ns.getattr(parent_inode))
        if name == b"..":
            parent = self.ns.parent_of(parent_inode)
            return self._entry(parent, self.ns.getattr(parent))
        special = self.virtual.reserved(parent_inode, name)
        if special is not None:
            return self._virtual_entry(*special)
        try:
            ino, rec = self.ns.lookup(parent_inode, name)
        except NotFound:
            special = self.virtual.lookup_in_real(parent_inode, name)
            if special is None:
                raise
            return self._virtual_entry(*special)
        return self._named(parent_inode, name, ino, rec)

    @_errors
    async def getattr(self, inode, ctx=None):
        if Virtual.owns(inode):
            return self._virtual_attrs(inode, self.virtual.getattr(inode))
        return self._attrs(inode, self.ns.getattr(inode))

    @_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        self._read_only(inode)
        if fields.update_size:
            await self._blocking(self.files.truncate, inode, attr.st_size)
        changes = {}
        if fields.update_mode:
            changes["mode"] = attr.st_mode
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_atime:
            changes["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            changes["mtime_ns"] = attr.st_mtime_ns
        if changes:
            rec = await self._blocking(functools.partial(self.files.setattr, inode, **changes))
        else:
            rec = self.ns.getattr(inode)
        return self._attrs(inode, rec)

    @_errors
    async def readlink(self, inode, ctx):
        if Virtual.owns(inode):
            return self.virtual.readlink(inode)
        return self.ns.readlink(inode)

    @_errors
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        self._read_only(parent_inode, name=(parent_inode, name))
        ino, rec = await self._blocking(self.ns.mknod, parent_inode, name, mode, ctx.uid, ctx.gid, rdev)
        return self._named(parent_inode, name, ino, rec)

    @_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        self._read_only(parent_inode, name=(parent_inode, name))
        ino, rec = await self._blocking(self.ns.mkdir, parent_inode, name, mode, ctx.uid, ctx.gid)
        return self._entry(ino, rec)

    @_errors
    async def symlink(self, parent_inode, name, target, ctx):
        self._read_only(parent_inode, name=(parent_inode, name))
        ino, rec = await self._blocking(self.ns.symlink, parent_inode, name, target, ctx.uid, ctx.gid)
        return self._entry(ino, rec)

    @_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        self._read_only(inode, new_parent_inode, name=(new_parent_inode, new_name))
        rec = await self._blocking(self.ns.link, inode, new_parent_inode, new_name)
        return self._named(new_parent_inode, new_name, inode, rec)

    @_errors
    async def unlink(self, parent_inode, name, ctx):
        self._read_only(parent_inode)
        await self._blocking(self.ns.unlink, parent_inode, name)

    @_errors
    async def rmdir(self, parent_inode, name, ctx):
        self._read_only(parent_inode)
        await self._blocking(self.ns.rmdir, parent_inode, name)

    @_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self._read_only(parent_inode_old, parent_inode_new, name=(parent_inode_new, name_new))
        await self._blocking(
            functools.partial(
                self.ns.rename,
                parent_inode_old,
                name_old,
                parent_inode_new,
                name_new,
                noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE),
                exchange=bool(flags & pyfuse3.RENAME_EXCHANGE),
            )
        )

    # -- directories ------------------------------------------------------------------------

    @_errors
    async def opendir(self, inode, ctx):
        self._next_dir += 1
        listing = _Listing(inode)
        if Virtual.owns(inode):  # a snapshot never changes: its listing can be taken now
            listing.virtual = self.virtual.readdir(inode)
            self.virtual.hold([i for _, i in listing.virtual])  # until releasedir
        else:
            self.ns.getattr(inode)  # ENOENT / ENOTDIR now rather than at the first readdir
        self._dirs[self._next_dir] = listing
        return self._next_dir

    @_errors
    async def readdir(self, fh, start_id, token):
        """Entries from position ``start_id`` on, read from the tree as it is *now*.

        Every entry handed to the kernel becomes a dentry in its cache (readdirplus), so it
        must be true when the reply is sent: a listing taken at opendir would bring back a
        name that a ``rename`` or ``unlink`` removed since, and the next ``open(O_CREAT)``
        of that name would open — and truncate — the file now under another name. The
        kernel holds the directory's lock (shared) for the whole request, and every change
        of the directory (exclusive), so what this request reads stays true until the
        kernel has taken it. Positions are indices into the names this handle has returned;
        the next ones continue after the last name returned, in name order, so entries
        created meanwhile appear if they sort after it (POSIX leaves that open).
        """
        listing = self._dirs[fh]
        if listing.virtual is not None:
            self._readdir_virtual(listing.virtual, start_id, token)
            return
        del listing.names[start_id:]  # what the kernel did not take is read again
        while True:
            after = listing.names[-1] if listing.names else None
            try:
                entries = self.ns.readdir(listing.ino, after=after, limit=READDIR_BATCH)
            except NotFound:
                return  # the directory was removed while open: it has no entries left
            for name, ino, rec in entries:
                if not pyfuse3.readdir_reply(token, name, self._attrs(ino, rec), len(listing.names) + 1):
                    return
                self.ns.hold(ino)  # readdirplus: the kernel counts each entry it took as a lookup
                self._note_name(listing.ino, name, ino, rec)
                listing.names.append(name)
            if len(entries) < READDIR_BATCH:
                return

    def _readdir_virtual(self, entries: list[tuple[bytes, int]], start_id: int, token) -> None:
        for offset in range(start_id, len(entries)):
            name, ino = entries[offset]
            attrs = self._virtual_attrs(ino, self.virtual.getattr(ino))
            if not pyfuse3.readdir_reply(token, name, attrs, offset + 1):
                return
            self.virtual.hold([ino])  # readdirplus: the kernel holds the entry like a lookup

    async def releasedir(self, fh):
        listing = self._dirs.pop(fh, None)
        if listing is not None and listing.virtual is not None:
            self.virtual.release([(ino, 1) for _, ino in listing.virtual])

    async def fsyncdir(self, fh, datasync):
        await self._blocking(self.repo.flush)

    # -- files ------------------------------------------------------------------------------

    def _file_info(self, fh: int, ino: int) -> pyfuse3.FileInfo:
        """The kernel may keep a file's cached pages across opens unless its content
        changed behind the mount's back since this mount last saw it (``chunkfs
        restore`` from another process, another node's commit): then they are dropped.
        ``_seen`` stays as it is: the kernel still has the old size (an open hands it no
        attributes), and the next reply with attributes must replace its inode."""
        manifest = self.ns.getattr(ino).manifest
        return pyfuse3.FileInfo(fh=fh, keep_cache=self._seen.get(ino) == manifest)

    @_errors
    async def open(self, inode, flags, ctx):
        if Virtual.owns(inode):
            extents = await self._blocking(self.virtual.extents, inode, bool(flags & WRITE_FLAGS))
            return pyfuse3.FileInfo(fh=self.files.open_version(extents), keep_cache=True)
        # The kernel leaves O_TRUNC to us (libfuse enables atomic_o_trunc) and
        # has already dropped its cached pages and size: the file must be empty.
        writer = ctx.uid if flags & WRITE_FLAGS else None
        fh = await self._blocking(
            functools.partial(self.files.open, inode, truncate=bool(flags & os.O_TRUNC), writer_uid=writer)
        )
        return self._file_info(fh, inode)

    @_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        self._read_only(parent_inode, name=(parent_inode, name))
        fh, ino, rec = await self._blocking(self.files.create, parent_inode, name, mode, ctx.uid, ctx.gid)
        return self._file_info(fh, ino), self._entry(ino, rec)

    @_errors
    async def read(self, fh, off, size):
        return await self._blocking(self.files.read, fh, off, size)

    @_errors
    async def write(self, fh, off, buf):
        # A file being written by a worker process takes the bytes with one copy into shared
        # memory: done here, on the loop's thread, unless it would wait (no thread hop).
        done = self.files.try_write(fh, off, buf)
        if done is not None:
            return done
        return await self._blocking(self.files.write, fh, off, buf)

    @_errors
    async def flush(self, fh):
        await self._blocking(self.files.flush, fh)

    @_errors
    async def fsync(self, fh, datasync):
        await self._blocking(self.files.fsync, fh)
        await self._blocking(self.repo.wait_published)  # cluster.publish_on_fsync: in the shared log too

    @_errors
    async def release(self, fh):
        ino = await self._blocking(self.files.release, fh)
        if ino is None:  # a snapshot file: nothing was committed
            return
        with contextlib.suppress(ChunkfsError):
            manifest = self.ns.getattr(ino).manifest
            if self.files.committed_here(ino) == manifest:  # our own commits keep the cache valid;
                self._seen[ino] = manifest  # another process's must still reach `_notice_changes`

    # -- extended attributes ----------------------------------------------------------------------

    @_errors
    async def setxattr(self, inode, name, value, ctx):
        self._read_only(inode)
        if name.startswith(b"system."):
            # POSIX ACLs (system.posix_acl_*) reach us as plain xattrs because we
            # do not claim ACL support; storing them would make `cp -a` set an
            # ACL instead of the mode, which the kernel never applies. Refusing
            # makes tools fall back to chmod.
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        await self._blocking(self.ns.setxattr, inode, name, value)

    @_errors
    async def getxattr(self, inode, name, ctx):
        if Virtual.owns(inode):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        try:
            return self.ns.getxattr(inode, name)
        except NoAttribute:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None

    @_errors
    async def listxattr(self, inode, ctx):
        if Virtual.owns(inode):
            return []
        return self.ns.listxattr(inode)

    @_errors
    async def removexattr(self, inode, name, ctx):
        self._read_only(inode)
        try:
            await self._blocking(self.ns.removexattr, inode, name)
        except NoAttribute:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None

    # -- the filesystem -----------------------------------------------------------------------------

    @_errors
    async def statfs(self, ctx):
        st = os.statvfs(self.repo.hot_path)
        s = pyfuse3.StatvfsData()
        s.f_bsize = st.f_bsize
        s.f_frsize = st.f_frsize
        s.f_blocks = st.f_blocks
        s.f_bfree = st.f_bfree
        s.f_bavail = st.f_bavail
        s.f_files = st.f_files
        s.f_ffree = st.f_ffree
        s.f_favail = st.f_favail
        s.f_namemax = NAME_MAX
        return s

    async def forget(self, inode_list):
        """The kernel dropped its references (``_entry``, ``_virtual_entry``); must not raise (no
        request to answer)."""
        refs = list(inode_list)
        self.virtual.release([(ino, n) for ino, n in refs if Virtual.owns(ino)])
        try:
            await self._blocking(self.ns.release_many, [(ino, n) for ino, n in refs if not Virtual.owns(ino)])
        except ChunkfsError as e:
            log.error("forget: %s", e)
        for ino, _n in refs:
            # Once nothing references it, the kernel caches nothing of it any more. A FORGET of an
            # inode the kernel replaced (a new generation) leaves the live one, of the same number,
            # referenced: what the mount knows of that one must stay.
            if Virtual.owns(ino) or not self.ns.held(ino):
                self._seen.pop(ino, None)
                self._kernel_names.pop(ino, None)
                self.files.forget(ino)

    def close(self) -> None:
        """Commit every open file and drop the nameless inodes that only the kernel still
        referenced (it need not FORGET everything before unmounting)."""
        self.notifier.stop()
        with contextlib.suppress(ChunkfsError):
            self.files.close_all()
            self.ns.forget_orphans()
