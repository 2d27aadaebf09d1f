"""The one exception hierarchy of chunkfs.

Every error a user can meet is a ``ChunkfsError`` whose message names the object
(file, chunk, pack, config key) and, where there is one, what to do. The CLI
prints ``str(error)`` on one line and exits with ``exit_code`` — one per kind, so
a script can tell "no such repository" from "damage found" (the table in
docs/operations.md is generated from these classes: tools/errordoc.py); the FUSE
layer maps each class to an errno (``errno`` attribute) and logs the message.
"""

from __future__ import annotations

import errno as _errno


def by_name(kind: str, message: str) -> ChunkfsError:
    """The error of class ``kind`` (a name of this module) with ``message``; a ``ChunkfsError`` if
    there is no such class. For errors that cross a process boundary as text (the mount daemon's
    ready line, an engine worker's replies) and must keep their kind, and so their exit code."""
    cls = globals().get(kind)
    if not (isinstance(cls, type) and issubclass(cls, ChunkfsError)):
        cls = ChunkfsError
    return cls(message)


class ChunkfsError(Exception):
    """Any other error: something refused as asked (read-only, not empty, too large, a name too long), or
    a local file the command named that could not be used.

    ``exit_code`` for the CLI, ``errno`` for the FUSE layer."""

    exit_code = 1
    errno = _errno.EIO


class ConfigError(ChunkfsError):
    """chunkfs.toml or a command-line setting is invalid."""

    exit_code = 3
    errno = _errno.EINVAL


class UsageError(ChunkfsError):
    """The command was called wrongly (exit code 2, like argparse)."""

    exit_code = 2
    errno = _errno.EINVAL


class NotFound(ChunkfsError):
    """A repository, path, chunk or pack does not exist."""

    exit_code = 4
    errno = _errno.ENOENT


class AlreadyExists(ChunkfsError):
    """Creating something that is already there (a repository, a tag, a location another repository holds)."""

    exit_code = 5
    errno = _errno.EEXIST


class CorruptData(ChunkfsError):
    """Damage: stored bytes do not match their hash, a structure does not parse (fsck or a drill
    that found problems exits with this code too).

    ``detail``: what is wrong, without the object's name or the advice around it (a report
    that names the object itself, like fsck's, shows just this)."""

    exit_code = 6
    errno = _errno.EIO

    def __init__(self, message: str = "", *, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail or message


class FormatVersionError(ChunkfsError):
    """The repository was written by an incompatible chunkfs version."""

    exit_code = 7


class BackendUnavailable(ChunkfsError):
    """A storage backend (S3, a directory tier) cannot be reached or refuses access."""

    exit_code = 8
    errno = _errno.EIO


class NoSpace(ChunkfsError):
    """A tier or the index ran out of space."""

    exit_code = 9
    errno = _errno.ENOSPC


class Conflict(ChunkfsError):
    """The operation conflicts with the current state: the repository is in use (locked), a mount
    is busy, another gc runs, a location belongs to another repository."""

    exit_code = 10
    errno = _errno.EBUSY


class ReadOnly(ChunkfsError):
    """A write to something that cannot change (a snapshot view, a sealed pack)."""

    errno = _errno.EROFS


class NotEmpty(ChunkfsError):
    """Removing or replacing a directory that still has entries."""

    errno = _errno.ENOTEMPTY


class NotADirectory(ChunkfsError):
    errno = _errno.ENOTDIR


class IsADirectory(ChunkfsError):
    errno = _errno.EISDIR


class InvalidArgument(ChunkfsError):
    """A request that can never succeed as asked (rename a directory into itself, ...)."""

    errno = _errno.EINVAL


class NoAttribute(ChunkfsError):
    """An extended attribute that is not set."""

    errno = _errno.ENODATA


class NameTooLong(ChunkfsError):
    errno = _errno.ENAMETOOLONG


class FileTooLarge(ChunkfsError):
    """A size or write beyond ``types.MAX_FILE_SIZE``."""

    errno = _errno.EFBIG
