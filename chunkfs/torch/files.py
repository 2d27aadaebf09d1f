"""A repository as the filesystem of torch's distributed checkpointing (DCP).

DCP's ``FileSystemWriter`` and ``FileSystemReader`` do all their file work through a
``FileSystemBase`` (create a stream, rename, mkdir, …). ``RepoFiles`` is one whose files
live in a chunkfs repository, reached by the library API from the calling process: a
rank's bytes are chunked, hashed and stored in that rank's own process, beside the mount
and every other rank (several writer processes per repository, docs/concurrency.md),
and never cross FUSE.

Paths are repository paths (``/llama/run1/step-1000/__0_0.distcp``); a path given inside
a mounted chunkfs (``/models/llama/run1/step-1000``) names the repository mounted there.

Each file written is a file like any other: versioned when its stream closes (a version
is made durable before ``close`` returns: packs synced, index committed), grouped into
packs with its run, visible through the mount, kept by gc and moved by tiering. A stream
that fails is not committed: a new file is removed again, an existing one keeps its
last version.

The repository is opened only while DCP works (``opened``): between saves a rank holds no
lock, lease or open pack.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from torch.distributed.checkpoint.filesystem import FileSystemBase

from chunkfs import mounts
from chunkfs.engine import readahead
from chunkfs.engine.readahead import ReadAhead
from chunkfs.errors import IsADirectory, NotFound, UsageError
from chunkfs.repo import Repository
from chunkfs.types import Extent


def locate(path: str | os.PathLike, repo: str | os.PathLike | None) -> tuple[Path, str]:
    """(repository directory, repository path) of a checkpoint path: a path inside a mounted
    chunkfs, or (with ``repo``) a path inside that repository."""
    inside = mounts.repository_of(Path(os.path.realpath(path)), repo, "repo=")
    if inside is not None:
        return inside
    if repo is None:
        raise UsageError(
            f"{path}: not inside a mounted chunkfs; give the repository too: "
            f"Writer({str(path)!r}, repo='/path/to/repo') names a path inside it"
        )
    return Path(repo), "/" + str(path).strip("/")


class RepoFiles(FileSystemBase):
    """DCP's file operations on one repository."""

    def __init__(self, repo: str | os.PathLike | None, *, writable: bool) -> None:
        self.repo_dir = Path(repo) if repo is not None else None
        self.writable = writable
        self._repo: Repository | None = None
        self._users = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        """A writer handed to another process (an async save's) opens the repository there."""
        return {"repo_dir": self.repo_dir, "writable": self.writable}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["repo_dir"], writable=state["writable"])

    # -- the repository, open while DCP works -----------------------------------------

    @contextlib.contextmanager
    def opened(self) -> Iterator[Repository]:
        """The repository, opened on first use and closed when the last user is done (its open
        packs sealed: a rank between saves holds nothing)."""
        with self._lock:
            if self._repo is None:
                if self.repo_dir is None:
                    raise UsageError("no checkpoint path given yet (DCP calls reset(checkpoint_id) first)")
                self._repo = (Repository.for_writing(self.repo_dir) if self.writable
                              else Repository(self.repo_dir, writable=False))  # fmt: skip
            self._users += 1
            repo = self._repo
        try:
            yield repo
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._repo = None
                    repo.close()

    # -- FileSystemBase ---------------------------------------------------------------

    def init_path(self, path: str | os.PathLike) -> str:
        """The repository path of a checkpoint directory (and, the first time, its repository)."""
        repo_dir, repo_path = locate(path, self.repo_dir)
        if self.repo_dir is not None and repo_dir.resolve() != self.repo_dir.resolve():
            raise UsageError(f"{path}: in repository {repo_dir}, but this writer writes {self.repo_dir}")
        self.repo_dir = repo_dir
        return repo_path

    def concat_path(self, path: str | os.PathLike, suffix: str) -> str:
        return f"{str(path).rstrip('/')}/{suffix}"

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Iterator[io.RawIOBase]:
        with self.opened() as repo:
            if "w" in mode:
                with WriteStream(repo, str(path)) as stream:
                    yield stream
            else:
                with ReadStream(repo, str(path)) as stream:
                    yield stream

    def rename(self, path: str | os.PathLike, new_path: str | os.PathLike) -> None:
        with self.opened() as repo:
            old_parent, old = _split(repo, str(path))
            new_parent, new = _split(repo, str(new_path))
            repo.ns.rename(old_parent, old, new_parent, new)

    def mkdir(self, path: str | os.PathLike) -> None:
        with self.opened() as repo:
            repo.ns.makedirs(str(path), os.getuid(), os.getgid())

    def exists(self, path: str | os.PathLike) -> bool:
        with self.opened() as repo:
            try:
                repo.ns.resolve(str(path))
            except NotFound:
                return False
            return True

    def rm_file(self, path: str | os.PathLike) -> None:
        with self.opened() as repo:
            parent, name = _split(repo, str(path))
            repo.ns.unlink(parent, name)

    def ls(self, path: str | os.PathLike) -> list[str]:
        with self.opened() as repo:
            entries = repo.ns.readdir(repo.ns.resolve(str(path)))
        return [self.concat_path(path, os.fsdecode(name)) for name, _, _ in entries]

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        """Whether ``checkpoint_id`` is a path inside a mounted chunkfs."""
        return mounts.split(Path(os.path.realpath(checkpoint_id))) is not None


def _umask() -> int:
    """This process's umask, read without setting it (``os.umask`` would change it for a moment
    under the other threads of a DCP writer, which create files too)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def _split(repo: Repository, path: str) -> tuple[int, bytes]:
    """(parent directory inode, name) of a repository path."""
    parent, _, name = path.rstrip("/").rpartition("/")
    return repo.ns.resolve(parent), os.fsencode(name)


class WriteStream(io.RawIOBase):
    """A file being written front to back; its content becomes the file's new version at
    ``close`` (durable when ``close`` returns)."""

    def __init__(self, repo: Repository, path: str) -> None:
        super().__init__()
        self.repo = repo
        self.path = path
        parent, name = _split(repo, path)
        try:
            self.ino, rec = repo.ns.lookup(parent, name)
            if stat.S_ISDIR(rec.mode):
                raise IsADirectory(f"{path}: is a directory; a checkpoint file cannot replace it")
            self._created = None
        except NotFound:
            self.ino, _ = repo.ns.mknod(parent, name, 0o666 & ~_umask(), os.getuid(), os.getgid(), versioned=False)
            self._created = (parent, name)
        repo.ns.hold(self.ino)  # renamed or unlinked meanwhile, the inode stays until we are done
        self.content = repo.file_content(self.ino)
        self.content.truncate(0)
        self._offset = 0
        self._on_commit: list[Callable[[list[Extent]], None]] = []

    def __exit__(self, exc_type, exc, tb) -> None:
        """Leaving a ``with`` block commits; leaving it by an exception commits nothing (``abort``)."""
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        n = memoryview(b).nbytes
        self.content.write(self._offset, b)
        self._offset += n
        return n

    def tell(self) -> int:
        return self._offset

    @property
    def chunk_size(self) -> int:
        return self.repo.settings.chunking.chunk_size

    def splice(self, data, extents: list[Extent]) -> bool:
        """Write ``data`` as the stored chunks ``extents`` that hold its bytes (an unchanged tensor:
        incremental.py); False, nothing written, where that would not give the chunks ``write``
        gives (``FileContent.splice``) — then write the bytes."""
        if not self.content.splice(self._offset, data, extents):
            return False
        self._offset += memoryview(data).nbytes
        return True

    def on_commit(self, callback: Callable[[list[Extent]], None]) -> None:
        """Call ``callback(extents)`` with the file's extents once its content is committed."""
        self._on_commit.append(callback)

    def close(self) -> None:
        """Commit the content as the file's new version (once)."""
        if self.closed:
            return
        try:
            self.repo.commit_file(self.ino, self.content)
            if self._on_commit:
                extents = self.repo.ns.extents(self.ino)
                for callback in self._on_commit:
                    callback(extents)
        finally:
            self._done()

    def abort(self) -> None:
        """Nothing of this stream is committed; a file it created goes again."""
        if self.closed:
            return
        try:
            if self._created is not None:
                with contextlib.suppress(NotFound):
                    self.repo.ns.unlink(*self._created)
        finally:
            self._done()

    def _done(self) -> None:
        self.content.close()
        self.repo.ns.release(self.ino)
        super().close()


class ReadStream(io.RawIOBase):
    """A file's current content, read (and verified) from whatever tier holds its chunks.

    Reads that move forward through the file (a rank loading its tensors in file order)
    have the next chunks fetched ahead on the hot tier (engine/readahead.py, as the mount
    does); warm and cold packs are read ahead along the pack by the remote reader."""

    def __init__(self, repo: Repository, path: str) -> None:
        super().__init__()
        ino = repo.ns.resolve(path)
        if stat.S_ISDIR(repo.ns.getattr(ino).mode):
            raise IsADirectory(f"{path}: is a directory, not a checkpoint file")
        self.content = repo.content_of(repo.ns.extents(ino))
        self.size = self.content.size
        self._pos = 0
        self._ahead = ReadAhead(repo.chunks)
        self._stream = readahead.ReadStream()
        self._lock = threading.Lock()

    def close(self) -> None:
        if not self.closed:
            self._ahead.close()
        super().close()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def pread(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` (fewer at the end of the file), without moving the position."""
        size = max(0, min(size, self.size - offset))
        return self._ahead.read(self.content, self._stream, offset, size, self._lock) if size else b""

    def readinto(self, b) -> int:
        data = self.pread(self._pos, memoryview(b).nbytes)
        memoryview(b).cast("B")[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos
