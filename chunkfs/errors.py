"""The one exception hierarchy of chunkfs.

Every error a user can meet is a ``ChunkfsError`` whose message names the object
(file, chunk, pack, config key) and, where there is one, what to do. The CLI
prints ``str(error)`` on one line and exits with ``exit_code``; the FUSE layer
maps each class to an errno (``errno`` attribute) and logs the message.
"""

from __future__ import annotations

import errno as _errno


class ChunkfsError(Exception):
    """Base class. ``exit_code`` for the CLI, ``errno`` for the FUSE layer."""

    exit_code = 1
    errno = _errno.EIO


class ConfigError(ChunkfsError):
    """chunkfs.toml or a command-line setting is invalid."""

    errno = _errno.EINVAL


class UsageError(ChunkfsError):
    """The command was called wrongly (exit code 2, like argparse)."""

    exit_code = 2
    errno = _errno.EINVAL


class NotFound(ChunkfsError):
    """A repository, path, chunk or pack does not exist."""

    errno = _errno.ENOENT


class AlreadyExists(ChunkfsError):
    """Creating something that is already there."""

    errno = _errno.EEXIST


class CorruptData(ChunkfsError):
    """Stored bytes do not match their hash, or a structure does not parse."""

    errno = _errno.EIO


class FormatVersionError(ChunkfsError):
    """The repository was written by an incompatible chunkfs version."""


class BackendUnavailable(ChunkfsError):
    """A storage backend cannot be reached or refuses access."""

    errno = _errno.EIO


class NoSpace(ChunkfsError):
    """A tier or the index ran out of space."""

    errno = _errno.ENOSPC


class Conflict(ChunkfsError):
    """The operation conflicts with the current state (e.g. repository in use)."""

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
