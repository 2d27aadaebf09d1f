"""The library API: create and open repositories, wire the layers together.

A repository on disk::

    REPO/chunkfs.toml     settings (config.py)
    REPO/index/           the LMDB index (index/)
    REPO/hot/             the hot tier: packs/ab/<pack id>.pack (store/)
    REPO/lock             flock'd by the one process that may write

The CLI, the FUSE daemon and the admin operations all go through
``Repository``. One process at a time opens a repository for writing (the
lock); any number may open it read-only alongside (LMDB readers never block).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from chunkfs import config
from chunkfs.engine.chunks import ChunkIO
from chunkfs.engine.file import FileContent
from chunkfs.errors import AlreadyExists, Conflict, NotFound
from chunkfs.index import Index
from chunkfs.namespace import Namespace
from chunkfs.namespace.history import History
from chunkfs.store.backend import LocalBackend
from chunkfs.store.packstore import PackStore
from chunkfs.types import Extent

LOCK_NAME = "lock"


class Repository:
    """An open chunkfs repository."""

    def __init__(self, path: Path, *, writable: bool = True) -> None:
        self.path = Path(path).resolve()
        if not (self.path / config.CONFIG_NAME).exists():
            raise NotFound(f"{self.path}: not a chunkfs repository (no {config.CONFIG_NAME}); create one with `chunkfs init`")
        self.settings = config.load(self.path / config.CONFIG_NAME)
        self.writable = writable
        self._closed = False
        self._lock_fd = self._take_lock() if writable else None
        try:
            self.index = Index(self.path / "index", readonly=False)
        except BaseException:  # a failed open must not keep the repository locked
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            raise
        self.hot = LocalBackend(self.hot_path)
        self.packs = PackStore(self.index, self.hot, self.settings.packs)
        self.chunks = ChunkIO(self.packs, self.settings.compression, self.settings.cache.memory)
        self.ns = Namespace(self.index)
        self.history = History(self.index)
        if writable:
            self.packs.recover()
            self.ns.forget_orphans()

    @property
    def hot_path(self) -> Path:
        return self.path / self.settings.tiers.hot

    def _take_lock(self) -> int:
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise Conflict(
                f"{self.path}: repository is in use by {holder} (mounted or importing); "
                "unmount it or wait for that command to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        return fd

    @classmethod
    def create(cls, path: Path, *, hot: Path | None = None, settings: config.Settings | None = None) -> Repository:
        """Make a new repository at ``path`` (which must not be one already)."""
        path = Path(path)
        if (path / config.CONFIG_NAME).exists() or (path / "index").exists():
            raise AlreadyExists(f"{path}: a chunkfs repository already exists here; refusing to overwrite it")
        if path.exists() and any(path.iterdir()):
            raise AlreadyExists(f"{path}: directory is not empty; choose a new or empty directory")
        settings = settings or config.Settings()
        if hot is not None:
            settings = config.Settings(
                **{**settings.__dict__, "tiers": config.TierSettings(hot=str(Path(hot).resolve()))}
            )
        text = config.render(settings)
        config.parse_text(text)  # settings the next open would refuse: fail before creating anything
        path.mkdir(parents=True, exist_ok=True)
        Index(path / "index", create=True).close()
        (path / settings.tiers.hot).mkdir(parents=True, exist_ok=True)
        tmp = path / (config.CONFIG_NAME + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path / config.CONFIG_NAME)
        return cls(path)

    # -- files ----------------------------------------------------------------------

    def file_content(self, ino: int) -> FileContent:
        """The content of file ``ino``, ready to read and modify."""
        return FileContent(self.chunks, self.ns.extents(ino), self.ns.group_of(ino), self.settings.chunking)

    def content_of(self, extents: list[Extent]) -> FileContent:
        """Read access to any content (a historic version, say) by its extents."""
        return FileContent(self.chunks, extents, "", self.settings.chunking)

    def commit_file(self, ino: int, content: FileContent, *, final: bool = True, mtime_ns: int | None = None):
        """Make ``content`` durable and the current content of ``ino``."""
        extents = content.finish() if final else content.commit()
        rec = self.ns.set_content(ino, extents, mtime_ns)
        self.index.sync()  # metasync is off: without this a power cut could undo the commit
        return rec

    def flush(self) -> None:
        """Make everything written so far durable (packs, then index)."""
        self.chunks.flush()
        self.index.sync()

    def close(self) -> None:
        """Seal open packs (if writable), close the index, release the lock; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if self.writable:
            self.packs.close()
        self.index.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
