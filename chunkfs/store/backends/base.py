"""Where pack files live: the backend interface every location implements.

A backend stores named, immutable objects (``packs/ab/abcdef….pack``). The hot
tier is always a local directory (local.py); the S3 backend (s3.py) implements the
same interface for the warm and cold tiers. Names use '/' as separator on every backend.
"""

from __future__ import annotations

import errno
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3

from chunkfs.errors import BackendUnavailable, ConfigError, CorruptData, NoSpace, NotFound

ARCHIVE_STORAGE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
"""S3 storage classes whose objects must be restored before a GET (GLACIER_IR is read directly)."""


class Backend(ABC):
    """Object storage: put/get/get-range/list/delete/exists."""

    url: str

    @abstractmethod
    def put(self, name: str, data: bytes, *, standard: bool = False) -> None:
        """Store ``data`` under ``name`` atomically (readers see all or nothing). ``standard``: in
        the store's default class whatever the tier's storage class (a small object that must be
        readable without a restore: store/backends/ownership.py's marker)."""

    @abstractmethod
    def put_file(self, name: str, path: Path, *, blake3_digest: bytes | None = None) -> None:
        """Store a local file's content under ``name`` atomically; the caller then checks it with
        ``verify`` (S3 does not check it twice).

        ``blake3_digest``: the file's BLAKE3 where the caller already has it (it just hashed the
        pack to verify the copy), so that a backend that records it (S3, in the object metadata)
        does not read the whole file once more to compute it.
        """

    def put_new(self, name: str, data: bytes) -> bool:
        """Create ``name`` only if no object has that name (a conditional write): True when
        this call created it, False when it existed. The shared log of a repository used by
        several nodes rests on it (docs/multinode.md); a store that cannot do it refuses."""
        raise ConfigError(f"{self.url}: conditional writes need an S3 store; a shared repository needs an S3 warm tier")

    @abstractmethod
    def get(self, name: str) -> bytes: ...

    @abstractmethod
    def get_range(self, name: str, offset: int, length: int) -> bytes: ...

    @abstractmethod
    def size(self, name: str) -> int: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]: ...

    guard: Callable[[], None] | None = None
    """Called before every delete (store/backends/ownership.py: the location must be this repository's)."""

    def delete(self, name: str) -> None:
        """Remove ``name``; removing a missing object is not an error. Only once ``guard``
        (when one is set) agreed that the location is the repository's own."""
        if self.guard is not None:
            self.guard()
        self._delete(name)

    @abstractmethod
    def _delete(self, name: str) -> None: ...

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


def os_error(e: OSError, what: str) -> Exception:
    """Map an OSError on a local tier to the chunkfs error a user can act on."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"{what}: no space left on the device; free space or move packs to another tier")
    if e.errno == errno.ENOENT:
        return NotFound(f"{what}: missing")
    return BackendUnavailable(f"{what}: {e.strerror}")
