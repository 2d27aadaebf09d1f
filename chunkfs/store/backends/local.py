"""The local-directory backend: the hot tier, and any tier or replica on a local or NFS path."""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from chunkfs.store.backends.base import Backend, os_error


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Fd:
    """A cached descriptor and the reads using it now: one dropped from the cache (evicted,
    or its file deleted) is closed by its last reader, never under a ``pread`` — a closed
    number may be reused at once by another open, and the read would get another file's bytes."""

    fd: int
    users: int = 0
    dropped: bool = False


class LocalBackend(Backend):
    """A directory on a local (or NFS) filesystem.

    Reads use ``pread`` on file descriptors kept open in a small LRU, since the
    read path fetches one chunk at a time from the same few packs.
    """

    MAX_FDS = 64

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)
        self._fds: OrderedDict[str, _Fd] = OrderedDict()
        self._lock = threading.Lock()

    def path(self, name: str) -> Path:
        return self.root / name

    def put(self, name: str, data: bytes, *, standard: bool = False) -> None:
        self._write_atomic(name, lambda f: f.write(data))

    def put_file(self, name: str, path: Path, *, blake3_digest: bytes | None = None) -> None:
        """A copy: a directory keeps no digest, so ``blake3_digest`` is not needed here."""

        def copy(f):
            with open(path, "rb") as src:
                while block := src.read(8 << 20):
                    f.write(block)

        self._write_atomic(name, copy)

    def adopt(self, name: str, path: Path) -> None:
        """Make the complete, fsync'd local file ``path`` the object ``name``: renamed into place
        when on the same filesystem (no copy), copied otherwise; ``path`` is gone afterwards."""
        dest = self.path(name)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
            _fsync_dir(dest.parent)
            return
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise os_error(e, f"{self.url}/{name}") from None
        self.put_file(name, path)
        Path(path).unlink(missing_ok=True)

    def _write_atomic(self, name: str, fill) -> None:
        dest = self.path(name)
        tmp = dest.with_name(dest.name + ".tmp")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise os_error(e, f"{self.url}/{name}") from None

    def _acquire(self, name: str) -> _Fd:
        """The cached descriptor of ``name``, counted as in use until ``_release``."""
        with self._lock:
            entry = self._fds.get(name)
            if entry is not None:
                self._fds.move_to_end(name)
            else:
                try:
                    entry = self._fds[name] = _Fd(os.open(self.path(name), os.O_RDONLY))
                except OSError as e:
                    raise os_error(e, f"pack {self.url}/{name}") from None
                while len(self._fds) > self.MAX_FDS:
                    self._drop(self._fds.popitem(last=False)[1])
            entry.users += 1
            return entry

    def _release(self, entry: _Fd) -> None:
        with self._lock:
            entry.users -= 1
            if entry.dropped and entry.users == 0:
                os.close(entry.fd)

    @staticmethod
    def _drop(entry: _Fd) -> None:
        """Out of the cache (the caller holds the lock): closed now, or by its last reader."""
        entry.dropped = True
        if entry.users == 0:
            os.close(entry.fd)

    def get(self, name: str) -> bytes:
        try:
            return self.path(name).read_bytes()
        except OSError as e:
            raise os_error(e, f"{self.url}/{name}") from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        entry = self._acquire(name)
        try:
            return os.pread(entry.fd, length, offset)
        except OSError as e:
            raise os_error(e, f"{self.url}/{name}") from None
        finally:
            self._release(entry)

    def size(self, name: str) -> int:
        try:
            return self.path(name).stat().st_size
        except OSError as e:
            raise os_error(e, f"{self.url}/{name}") from None

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root
        for dirpath, _dirs, files in os.walk(base):
            for f in files:
                if f.endswith(".tmp"):
                    continue
                name = os.path.relpath(os.path.join(dirpath, f), base).replace(os.sep, "/")
                if name.startswith(prefix):
                    yield name

    def forget(self, name: str) -> None:
        """Close a cached descriptor (the file was truncated, replaced or deleted)."""
        with self._lock:
            entry = self._fds.pop(name, None)
            if entry is not None:
                self._drop(entry)

    def _delete(self, name: str) -> None:
        self.forget(name)
        try:
            self.path(name).unlink(missing_ok=True)
        except OSError as e:
            raise os_error(e, f"{self.url}/{name}") from None

    def free_bytes(self) -> tuple[int, int]:
        """(free, total) bytes of the filesystem holding this directory."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize

    def close(self) -> None:
        with self._lock:
            for entry in self._fds.values():
                self._drop(entry)
            self._fds.clear()
