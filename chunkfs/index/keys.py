"""Every LMDB database of a repository, and every key and value encoding.

This file is the canonical reference of the index's on-disk schema (docs/format.md
repeats it for readers who do not read Python). Nothing outside ``chunkfs.index``
builds or parses these bytes. All integers are big-endian so that LMDB's
byte-wise key order is numeric order.

Databases
---------

``meta``      repository-wide singletons.
    ``format``        → u32: index format version (``FORMAT_VERSION``); checked at open.
    ``repo_id``       → 16 bytes: random id of the repository, set at init.
    ``next_inode``    → u64: next inode number to hand out (1 is the root).
    ``next_manifest`` → u64: next manifest id (0 means 'no manifest').
    ``next_commit``   → u64: next commit number (commits start at 1; 0 means 'before anything').

``chunks``    chunk id (32) → location of its stored bytes.
    value: pack id (16) | offset u64 | stored length u32 | raw length u32 | flags u8
    Invariant: the pack exists in ``packs`` and the bytes at offset were fsync'd
    before this entry was committed. ``offset`` points at the stored bytes, after
    the pack record header. flags: low nibble compression (0 none, 1 zstd), high
    nibble kind (0 full, 1 delta — reserved).

``packs``     pack id (16) → what the index knows of the pack.
    value: tier u8 | state u8 | size u64 | chunk count u32 | created ns u64 | group (utf-8, rest)
    tier: 0 hot, 1 warm, 2 cold. state: 0 open (appending), 1 sealed (footer
    written, immutable). size counts bytes up to the last indexed record while
    open, the whole file once sealed.

``inodes``    inode u64 → attributes and content of a file, directory or symlink.
    value: mode u32 | uid u32 | gid u32 | nlink u32 | size u64 | atime ns i64 |
           mtime ns i64 | ctime ns i64 | rdev u32 | manifest u64 | symlink target (rest)
    ``mode`` includes the file type bits (S_IFREG, S_IFDIR, S_IFLNK, ...).
    ``manifest`` is 0 for an empty regular file and for non-files.
    Invariant: the root directory is inode 1 and always exists.

``dirents``   parent inode u64 | name bytes → child inode u64.
    All entries of one directory are contiguous (prefix = parent inode), in
    byte order of their names: readdir is a range scan. ``.`` and ``..`` are not
    stored.

``parents``   child inode u64 | parent inode u64 | name → empty.
    The reverse of ``dirents`` (a hard-linked file has several): gives a file's
    path, and lets rename/unlink of a directory check it stays a tree.

``manifests`` manifest id u64 → a file's content as a list of extents.
    value: format u8 (=1) | extent count u32 | extents, each: length u32 | chunk id (32)
    Extents are contiguous from offset 0; their lengths sum to the file size. A
    chunk id of 32 zero bytes is a hole (reads as zeros). Manifests are immutable:
    a changed file gets a new manifest id, so a version can keep the old one.

``xattrs``    inode u64 | name bytes → value bytes (extended attributes).

History (docs/versions.md). Every change of the tree gets a *commit number*
from ``meta/next_commit``; the tables below record each change under it, so
the tree as it was at any commit can be read back.

``commits``   commit u64 → time ns i64 (monotonic: never less than the previous commit's).

``dirhist``   parent inode u64 | name | 0x00 | ~commit u64 → child inode u64 (0: removed).
    One entry per change of a directory entry. ``~commit`` (bitwise not) sorts
    each name's entries newest first, so "the entry as of commit C" is one
    ``set_range`` away. Names never contain 0x00, so the separator is unambiguous.

``inohist``   inode u64 | ~commit u64 → a version of an inode:
    blake3 (32; zeros if unknown) | writer uid u32 | inode value as in ``inodes``.
    Written when an inode is created and each time a file's content is committed.
    The manifest it names is never deleted while the entry exists.

``tags``      name bytes → commit u64 | created ns i64 | path (utf-8, rest; empty: the whole tree).
"""

from __future__ import annotations

import struct

from chunkfs.errors import CorruptData
from chunkfs.types import (
    CHUNK_ID_LEN,
    PACK_ID_LEN,
    ChunkLocation,
    Extent,
    PackInfo,
    PackState,
    Tier,
)

FORMAT_VERSION = 1

DATABASES = (
    "meta", "chunks", "packs", "inodes", "dirents", "parents", "manifests", "xattrs",
    "commits", "dirhist", "inohist", "tags",
)  # fmt: skip

ROOT_INODE = 1

META_FORMAT = b"format"
META_REPO_ID = b"repo_id"
META_NEXT_INODE = b"next_inode"
META_NEXT_MANIFEST = b"next_manifest"
META_NEXT_COMMIT = b"next_commit"

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_CHUNK = struct.Struct(f">{PACK_ID_LEN}sQIIB")
_PACK = struct.Struct(">BBQIQ")
_INODE = struct.Struct(">IIIIQqqqIQ")
_EXTENT = struct.Struct(f">I{CHUNK_ID_LEN}s")
_MANIFEST_HEAD = struct.Struct(">BI")
MANIFEST_FORMAT = 1


def u32(n: int) -> bytes:
    return _U32.pack(n)


def decode_u32(b: bytes) -> int:
    return _U32.unpack(b)[0]


def u64(n: int) -> bytes:
    return _U64.pack(n)


def decode_u64(b: bytes) -> int:
    return _U64.unpack(b)[0]


# -- chunks -------------------------------------------------------------------


def encode_location(loc: ChunkLocation) -> bytes:
    return _CHUNK.pack(loc.pack, loc.offset, loc.stored_len, loc.raw_len, loc.flags)


def decode_location(b: bytes) -> ChunkLocation:
    pack, offset, stored, raw, flags = _CHUNK.unpack(b)
    return ChunkLocation(pack, offset, stored, raw, flags)


# -- packs --------------------------------------------------------------------


def encode_pack(info: PackInfo) -> bytes:
    head = _PACK.pack(info.tier, info.state, info.size, info.chunks, info.created_ns)
    return head + info.group.encode()


def decode_pack(b: bytes) -> PackInfo:
    tier, state, size, chunks, created = _PACK.unpack_from(b)
    group = bytes(b[_PACK.size :]).decode()
    return PackInfo(Tier(tier), PackState(state), size, chunks, group, created)


# -- inodes -------------------------------------------------------------------


def encode_inode(fields: tuple, target: bytes = b"") -> bytes:
    """``fields`` in the order of the value layout above, without the target."""
    return _INODE.pack(*fields) + target


def decode_inode(b: bytes) -> tuple[tuple, bytes]:
    return _INODE.unpack_from(b), bytes(b[_INODE.size :])


# -- dirents and parents ------------------------------------------------------


def dirent_key(parent: int, name: bytes) -> bytes:
    return _U64.pack(parent) + name


def dirent_name(key: bytes) -> bytes:
    return bytes(key[8:])


def parent_key(child: int, parent: int, name: bytes) -> bytes:
    return _U64.pack(child) + _U64.pack(parent) + name


def decode_parent_key(key: bytes) -> tuple[int, bytes]:
    return _U64.unpack_from(key, 8)[0], bytes(key[16:])


# -- manifests ----------------------------------------------------------------


def encode_manifest(extents: list[Extent]) -> bytes:
    out = bytearray(_MANIFEST_HEAD.pack(MANIFEST_FORMAT, len(extents)))
    for e in extents:
        out += _EXTENT.pack(e.length, e.chunk)
    return bytes(out)


def decode_manifest(b: bytes) -> list[Extent]:
    fmt, count = _MANIFEST_HEAD.unpack_from(b)
    if fmt != MANIFEST_FORMAT or len(b) != _MANIFEST_HEAD.size + count * _EXTENT.size:
        raise CorruptData(f"manifest of unknown format {fmt} or wrong length; run `chunkfs fsck`")
    return [Extent(n, c) for n, c in _EXTENT.iter_unpack(b[_MANIFEST_HEAD.size :])]


# -- xattrs -------------------------------------------------------------------


def xattr_key(inode: int, name: bytes) -> bytes:
    return _U64.pack(inode) + name


# -- history ------------------------------------------------------------------

_NOT = (1 << 64) - 1
_VERSION_HEAD = struct.Struct(">32sI")
_COMMIT = struct.Struct(">q")
_TAG = struct.Struct(">Qq")


def dirhist_prefix(parent: int, name: bytes) -> bytes:
    return _U64.pack(parent) + name + b"\x00"


def dirhist_key(parent: int, name: bytes, commit: int) -> bytes:
    return dirhist_prefix(parent, name) + _U64.pack(_NOT ^ commit)


def decode_dirhist_key(key: bytes) -> tuple[int, bytes, int]:
    """(parent, name, commit) of a ``dirhist`` key."""
    parent = _U64.unpack_from(key)[0]
    return parent, bytes(key[8:-9]), _NOT ^ _U64.unpack_from(key, len(key) - 8)[0]


def inohist_key(ino: int, commit: int) -> bytes:
    return _U64.pack(ino) + _U64.pack(_NOT ^ commit)


def decode_inohist_commit(key: bytes) -> int:
    return _NOT ^ _U64.unpack_from(key, 8)[0]


def encode_version(blake: bytes, writer_uid: int, fields: tuple, target: bytes) -> bytes:
    return _VERSION_HEAD.pack(blake, writer_uid) + encode_inode(fields, target)


def decode_version(b: bytes) -> tuple[bytes, int, tuple, bytes]:
    """(blake3, writer uid, inode fields, symlink target)."""
    blake, uid = _VERSION_HEAD.unpack_from(b)
    fields, target = decode_inode(b[_VERSION_HEAD.size :])
    return blake, uid, fields, target


def encode_commit_time(ns: int) -> bytes:
    return _COMMIT.pack(ns)


def decode_commit_time(b: bytes) -> int:
    return _COMMIT.unpack(b)[0]


def encode_tag(commit: int, created_ns: int, path: str) -> bytes:
    return _TAG.pack(commit, created_ns) + path.encode()


def decode_tag(b: bytes) -> tuple[int, int, str]:
    commit, created = _TAG.unpack_from(b)
    return commit, created, bytes(b[_TAG.size :]).decode()
