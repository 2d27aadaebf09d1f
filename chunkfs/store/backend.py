"""Where pack files live: the backend interface and the local-directory backend.

A backend stores named, immutable objects (``packs/ab/abcdef….pack``). The hot
tier is always a local directory; the S3 backend implements the same interface
for the warm and cold tiers. Names use '/' as separator on every backend.
"""

from __future__ import annotations

import errno
import os
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import blake3

from chunkfs.errors import BackendUnavailable, CorruptData, NoSpace, NotFound

ARCHIVE_STORAGE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
"""S3 storage classes whose objects must be restored before a GET (GLACIER_IR is read directly)."""


class Backend(ABC):
    """Object storage: put/get/get-range/list/delete/exists."""

    url: str

    @abstractmethod
    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name`` atomically (readers see all or nothing)."""

    @abstractmethod
    def put_file(self, name: str, path: Path, *, blake3_digest: bytes | None = None) -> None:
        """Store a local file's content under ``name`` atomically; the caller then checks it with
        ``verify`` (S3 does not check it twice).

        ``blake3_digest``: the file's BLAKE3 where the caller already has it (it just hashed the
        pack to verify the copy), so that a backend that records it (S3, in the object metadata)
        does not read the whole file once more to compute it.
        """

    @abstractmethod
    def get(self, name: str) -> bytes: ...

    @abstractmethod
    def get_range(self, name: str, offset: int, length: int) -> bytes: ...

    @abstractmethod
    def size(self, name: str) -> int: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]: ...

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove ``name``; removing a missing object is not an error."""

    def verify(self, name: str, blake3_digest: bytes, size: int, *, reread: bool = False) -> None:
        """Raise ``CorruptData`` unless ``name`` holds ``size`` bytes whose BLAKE3 is ``blake3_digest``.

        This default always reads the object back; S3 checks its stored metadata first.
        """
        if (actual := self.size(name)) != size:
            raise CorruptData(f"{self.url}/{name}: {actual} bytes stored, expected {size}")
        hasher = blake3.blake3()
        for offset in range(0, size, 8 << 20):
            hasher.update(self.get_range(name, offset, min(8 << 20, size - offset)))
        if hasher.digest() != blake3_digest:
            raise CorruptData(f"{self.url}/{name}: content does not match BLAKE3 {blake3_digest.hex()[:16]}…")

    def exists(self, name: str) -> bool:
        try:
            self.size(name)
        except NotFound:
            return False
        return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def os_error(e: OSError, what: str) -> Exception:
    """Map an OSError on a local tier to the chunkfs error a user can act on."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"{what}: no space left on the device; free space or move packs to another tier")
    if e.errno == errno.ENOENT:
        return NotFound(f"{what}: missing")
    return BackendUnavailable(f"{what}: {e.strerror}")


class LocalBackend(Backend):
    """A directory on a local (or NFS) filesystem.

    Reads use ``pread`` on file descriptors kept open in a small LRU, since the
    read path fetches one chunk at a time from the same few packs.
    """

    MAX_FDS = 64

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def path(self, name: str) -> Path:
        return self.root / name

    def put(self, name: str, data: bytes) -> None:
        self._write_atomic(name, lambda f: f.write(data))

    def put_file(self, name: str, path: Path, *, blake3_digest: bytes | None = None) -> None:
        """A copy: a directory keeps no digest, so ``blake3_digest`` is not needed here."""

        def copy(f):
            with open(path, "rb") as src:
                while block := src.read(8 << 20):
                    f.write(block)

        self._write_atomic(name, copy)

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

    def _fd(self, name: str) -> int:
        with self._lock:
            fd = self._fds.get(name)
            if fd is not None:
                self._fds.move_to_end(name)
                return fd
            try:
                fd = os.open(self.path(name), os.O_RDONLY)
            except OSError as e:
                raise os_error(e, f"pack {self.url}/{name}") from None
            self._fds[name] = fd
            while len(self._fds) > self.MAX_FDS:
                os.close(self._fds.popitem(last=False)[1])
            return fd

    def get(self, name: str) -> bytes:
        try:
            return self.path(name).read_bytes()
        except OSError as e:
            raise os_error(e, f"{self.url}/{name}") from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        try:
            data = os.pread(self._fd(name), length, offset)
        except OSError as e:
            raise os_error(e, f"{self.url}/{name}") from None
        return data

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
            fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)

    def delete(self, name: str) -> None:
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
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
