"""Value types shared by every layer (the vocabulary package).

They hold data only; how they are encoded in LMDB lives in ``index/keys.py`` and
how chunks are laid out in packs in ``store/pack/format.py``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from chunkfs.errors import ConfigError

ChunkId = bytes
"""BLAKE3-256 of a chunk's uncompressed bytes (32 bytes)."""

PackId = bytes
"""16 random bytes naming a pack; its file name is their hex."""

CHUNK_ID_LEN = 32
PACK_ID_LEN = 16

ROOT_INODE = 1
"""The root directory's inode number (it always exists)."""

NAME_MAX = 255
"""The longest file name (bytes), as on ext4: longer ones get ENAMETOOLONG."""

MAX_FILE_SIZE = 1 << 48
"""The largest file (256 TiB; ext4 allows 16 TiB): a larger size or a write past it is EFBIG.
Holes of any size below it cost nothing (index/keys.py stores one extent per hole)."""

MAX_LEVELS = 6
"""The most registry levels (``registry.levels``) a checkpoint key can hold (index/keys.py, "Long keys")."""

HOLE = bytes(CHUNK_ID_LEN)
"""The chunk id of a hole in a sparse file: reads as zeros, stores nothing."""


class Compression(enum.IntEnum):
    """How a chunk's bytes are stored (the low bits of its flags).

    The PLANES encodings are for float tensors, written only when packs are
    re-encoded on their way to warm or cold (docs/tiers.md): the bytes of each 2- or 4-byte element are
    split into planes (every element's byte 0, then every byte 1, ...), so the
    low-entropy sign/exponent bytes sit together where zstd can find them; bytes
    after the last whole element follow the planes unchanged. Then one zstd
    frame of it all. Values 4-15 are unknown: readers refuse them by name.
    """

    NONE = 0
    ZSTD = 1
    ZSTD_PLANES2 = 2
    ZSTD_PLANES4 = 3


class ChunkKind(enum.IntEnum):
    """What the stored bytes are (bits 4-7 of the flags).

    DELTA: the XOR with a base chunk, whose id the stored bytes begin with (written by
    re-encoding repacks: namespace/deltas.py, engine/codec.py).
    """

    FULL = 0
    DELTA = 1


def chunk_flags(compression: Compression, kind: ChunkKind = ChunkKind.FULL) -> int:
    return int(compression) | (int(kind) << 4)


def flags_compression(flags: int) -> Compression:
    return Compression(flags & 0x0F)


def flags_kind(flags: int) -> ChunkKind:
    return ChunkKind(flags >> 4)


class Tier(enum.IntEnum):
    HOT = 0
    WARM = 1
    COLD = 2


def tier_name(tier: Tier) -> str:
    return tier.name.lower()


def parse_tier(name: str) -> Tier:
    try:
        return Tier[name.upper()]
    except KeyError:
        raise ConfigError(f"{name!r} is not a tier; use hot, warm or cold") from None


class PackState(enum.IntEnum):
    OPEN = 0  # being appended to; bytes after the last indexed record may be torn
    SEALED = 1  # footer written, immutable


@dataclass(frozen=True, slots=True)
class ChunkLocation:
    """Where a chunk's stored bytes are: a byte range of one pack."""

    pack: PackId
    offset: int  # of the stored bytes (after the record header) in the pack
    stored_len: int
    raw_len: int
    flags: int


@dataclass(frozen=True, slots=True)
class PackInfo:
    """What the index knows of one pack."""

    tier: Tier
    state: PackState
    size: int
    chunks: int
    group: str
    created_ns: int


@dataclass(frozen=True, slots=True)
class Extent:
    """A run of a file's bytes: ``length`` bytes that are chunk ``chunk`` (or a hole)."""

    length: int
    chunk: ChunkId


@dataclass(slots=True)
class InodeRecord:
    """The stored attributes of one inode (file, directory or symlink).

    ``manifest`` names the file's current content (0: empty or not a file);
    ``target`` is a symlink's target.
    """

    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int = 0
    manifest: int = 0
    target: bytes = b""


@dataclass(frozen=True, slots=True)
class Version:
    """One committed state of an inode: its attributes and content at ``commit``.

    ``blake3`` is the whole-file BLAKE3 of a regular file's content (32 zero
    bytes when not known); ``writer_uid`` the user whose process wrote it.
    """

    ino: int
    commit: int
    record: InodeRecord
    blake3: bytes
    writer_uid: int
