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
    value: tier u8 | state u8 | size u64 | chunk count u32 | created ns u64 | group (rest)
    group: the run directory's path, UTF-8 with surrogateescape (names are any bytes).
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

Registry (docs/registry.md). One *checkpoint record* per checkpoint directory,
under a composite key parsed from its path (``namespace/registry/``):
``F1 … FN`` are the names of the levels above the step directory
(``registry.levels``, by default model, base, adapter, run), each as UTF-8
(``surrogateescape`` for names that are not); a level the path lacks is ''.
Level names come from path components, which never contain 0x00, so 0x00
terminates each field without escaping and the byte order of keys is: by F1,
then F2, …, then step, then inode — "every checkpoint of model M" and
"every checkpoint of one run, by step" are prefix range scans, "the newest of
one run" is the last key of its range. A *group* is the set of keys with the
same F1…FN (one run); prefix queries over several groups seek group by group.

``ckpts``     F1 0x00 … FN 0x00 | step u64 | inode u64 → a checkpoint record:
    commit u64 | time ns i64 | metric f64 | compact JSON object (UTF-8, surrogateescape):
    ``{"path": repository path, "src": {sidecar file: {key: value}}, "user": {key: value}}``.
    ``commit``/``time``: the newest commit number and the time when the record
    last changed (created, moved, metadata). ``metric``: the record's value of
    the metric named in ``meta/registry`` (NaN: none). ``src`` holds what
    was extracted from each sidecar file (replaced whole when the file is
    rewritten), ``user`` what users set (xattrs, ``chunkfs meta set``, which
    win over ``src``). Invariant: exactly one ``ckpt_ino`` entry points here.

``ckpt_ino``  inode u64 → the ``ckpts`` key of the directory's record (finds the
    record of a directory to update, re-key or drop it).

``ckpt_run``  FN 0x00 F1 0x00 … F(N-1) 0x00 | step u64 | inode u64 → empty.
    The ``ckpts`` key with its last level (the run) moved first: "run R at step
    S" is a prefix scan whatever the levels above the run are. One entry per
    ``ckpts`` entry.

``ckpt_metric`` F1 0x00 … FN 0x00 | metric f64, order-preserving | step u64 | inode u64 → empty.
    One entry per record that has a number for the metric of ``meta/registry``; the
    f64 is stored with its sign bit flipped (negative numbers: all bits), so
    byte order is numeric order: the smallest metric of a run is the first key
    of its group, the largest the last.

``meta/registry`` → JSON object ``{"levels": [names], "step_pattern": regex, "metric": name}``:
the settings the four databases above were built with. When the repository's
settings differ, the registry rebuilds them (keeping every record's metadata).

Tiers (docs/tiers.md). A sealed pack's *home* is the tier in its ``packs``
value; the databases below record extra verified copies, the write-back queue,
tier operations in flight, runs, pins and counters. Pack ids are the 16 bytes
of ``packs``; tiers are the u8 of ``packs`` (0 hot, 1 warm, 2 cold); a *group*
is a ``packs`` group (a run directory, UTF-8 with surrogateescape).

``uploads``   pack id (16) → queued ns i64.
    The write-back queue: sealed packs on the hot tier that have no verified
    copy on the warm tier yet. Added in the transaction that seals the pack
    (only when a warm tier is configured); removed in the transaction that
    records the copy in ``copies`` or moves the pack off the hot tier. The
    uploader takes the oldest first; "oldest age" is the smallest value.

``copies``    pack id (16) | tier u8 → verified ns i64 | BLAKE3 of the whole pack (32).
    A copy of the pack on ``tier`` besides its home, whose size and BLAKE3 were
    verified at ``verified ns`` (write-back uploads, a warm copy kept when a
    pack is brought back to hot). A hint, never trusted alone: a move to that
    tier verifies the object again before it switches the home. Never names
    the home tier itself. Dropped with the pack.

``moves``     pack id (16) | tier u8 → kind u8 | started ns i64.
    Tier operations in flight, for the crash analysis of docs/tiers.md. kind 0
    *new*: the object of the pack on ``tier`` is being created; kind 1 *old*:
    it is to be deleted. Written before the object is touched, removed once
    the operation is done. Whoever next takes the tier lock resolves every
    entry with one rule: the pack is *placed* on ``tier`` if its home is
    ``tier`` or ``copies`` has (pack, tier). A *new* object that is not placed
    is deleted (the operation is undone); an *old* object that is not placed
    is deleted (the operation is finished); a placed one is kept. Either way
    the entry goes.

``runs``      group (UTF-8, surrogateescape) → completed ns i64 | last read ns i64 | held tier u8.
    Lifecycle state of a run. ``completed``: when `chunkfs run complete`
    marked it (0: not marked; the policy also finds idle runs on its own).
    ``last read``: when a chunk of one of its packs was last read from the warm
    or cold tier, recorded at most once a minute per process (0: never).
    ``held``: the tier a `chunkfs tier move` put it on by hand and the policy
    must not move it from (only hot is held; 255: none).

``pins``      path (UTF-8, surrogateescape) → pinned ns i64 | chunk ids (32 each).
    `chunkfs prefetch --pin PATH`: the chunks of every file under PATH at the
    time of the pin. The disk read cache never evicts a chunk named by a pin,
    and a pack leaving the hot tier first copies its pinned chunks to the
    cache. `chunkfs unpin PATH` deletes the entry.

``counters``  name (ASCII) → u64.
    Cumulative activity figures (bytes written, read, deduplicated, cache
    hits, uploads, tier moves, …) added by every process that did the work;
    `chunkfs status` and the metrics endpoint show them.

``meta/upload_error`` → time ns i64 | message (UTF-8): the last failure of the
uploader, cleared by its next success (absent: none).

Operations (docs/operations.md): replication, restore drills, metadata backups.

``replicas``  pack id (16) | replica id (8) → verified ns i64 | size u64 | BLAKE3 of the whole pack (32).
    A verified copy of a sealed pack on one of ``replication.replicas``
    (store/replicas.py). The replica id is the first 8 bytes of the BLAKE3 of
    the replica's URL as configured (``replica_id``), so reordering the list
    keeps the entries. Written only after the object's size and BLAKE3 were
    checked on the replica; a hint for reads and repairs, which verify every
    chunk they take from it. Entries of a pack that left the index are stale
    (the replicator drops them).

``drills``    started ns u64 → compact JSON object of one `chunkfs drill` result
    (path, commit, source, files, bytes, seconds, verdict, problems…),
    oldest first; `chunkfs drill --history` lists them.

``meta/backup`` → generation u64 | time ns i64 | LMDB txn id u64 of the last metadata
    backup this repository uploaded (store/metabackup.py); absent: never.
    Stored outside the backup's own snapshot semantics: the backup written as
    generation N contains generation N-1 here.

Garbage collection (docs/gc.md).

``condemned`` chunk id (32) → epoch u64 | condemned ns i64 | location (as in ``chunks``).
    Chunks that gc found unreferenced and took out of ``chunks`` (so dedup no
    longer matches them) in the transaction that bumped ``meta/gc_epoch`` to
    ``epoch``. Their bytes are still in their pack. A commit that references
    one (``Txn.manifest_put``) or a writer flush that located one moves it
    back to ``chunks`` (resurrection). A later gc deletes the entry (and only
    then the bytes) once ``epoch`` is older than every live writer lease's
    floor and the grace period has passed.

``gc_leases`` lease id (16) → pid u32 | floor epoch u64 | heartbeat ns i64 | host (UTF-8, rest).
    One per process that writes chunks (store/packstore.py). ``floor``: the
    gc epoch at the start of the oldest write window (an open file being
    written) of that process; chunks condemned at an epoch ≥ some live floor
    may still be referenced by a commit to come, and keep their bytes.
    Written before the process's first dedup lookup, refreshed at every
    flush, removed at close; gc removes leases of dead processes.

``meta/gc_epoch`` → u64: number of condemn transactions so far (absent: 0).
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
    "ckpts", "ckpt_ino", "ckpt_run", "ckpt_metric",
    "uploads", "copies", "moves", "runs", "pins", "counters",
)  # fmt: skip

DATABASES += ("replicas", "drills")  # operations (the "Operations" section at the end)

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
    return head + info.group.encode("utf-8", "surrogateescape")  # a group is a path: any bytes


def decode_pack(b: bytes) -> PackInfo:
    tier, state, size, chunks, created = _PACK.unpack_from(b)
    group = bytes(b[_PACK.size :]).decode("utf-8", "surrogateescape")
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


# -- checkpoint registry -----------------------------------------------------------------

import json as _json  # noqa: E402  (used only by the registry encodings below)

META_REGISTRY = b"registry"

CKPT_TRAILER = 16  # step u64 | inode u64 after the fields
CKPT_METRIC_TRAILER = 24  # metric f64 | step u64 | inode u64
_CKPT_HEAD = struct.Struct(">Qqd")
_F64 = struct.Struct(">d")
_SIGN = 1 << 63


def _field(name: str) -> bytes:
    b = name.encode("utf-8", "surrogateescape")
    if b"\x00" in b:
        raise ValueError(f"a checkpoint key field cannot contain NUL: {name!r}")
    return b


def ckpt_prefix(fields, open_last: bool = False) -> bytes:
    """Key prefix of the records whose first levels are ``fields``.

    With ``open_last`` the last field is left unterminated: the prefix then also
    matches records whose field at that level merely starts with it.
    """
    out = b"".join(_field(f) + b"\x00" for f in fields)
    return out[:-1] if open_last and fields else out


def ckpt_key(fields, step: int, ino: int) -> bytes:
    return ckpt_prefix(fields) + _U64.pack(step) + _U64.pack(ino)


def decode_ckpt_fields(key: bytes, trailer: int = CKPT_TRAILER) -> tuple[str, ...]:
    return tuple(
        f.decode("utf-8", "surrogateescape") for f in bytes(key[: len(key) - trailer - 1]).split(b"\x00")
    )


def decode_ckpt_key(key: bytes) -> tuple[tuple[str, ...], int, int]:
    """(fields, step, inode) of a ``ckpts`` key."""
    n = len(key)
    return decode_ckpt_fields(key), _U64.unpack_from(key, n - 16)[0], _U64.unpack_from(key, n - 8)[0]


def ckpt_group_end(key: bytes, trailer: int = CKPT_TRAILER) -> bytes:
    """The smallest key after every key of ``key``'s group (same fields)."""
    return bytes(key[: len(key) - trailer - 1]) + b"\x01"


def ckpt_run_key(fields, step: int, ino: int) -> bytes:
    return ckpt_key((fields[-1], *fields[:-1]), step, ino)


def ckpt_run_prefix(run: str) -> bytes:
    return _field(run) + b"\x00"


def decode_ckpt_run_key(key: bytes) -> tuple[tuple[str, ...], int, int]:
    """(fields in level order, step, inode) of a ``ckpt_run`` key."""
    rotated, step, ino = decode_ckpt_key(key)
    return (*rotated[1:], rotated[0]), step, ino


def _f64_key(x: float) -> bytes:
    n = int.from_bytes(_F64.pack(x), "big")
    return (n ^ ((1 << 64) - 1) if n & _SIGN else n | _SIGN).to_bytes(8, "big")


def _f64_from_key(b: bytes) -> float:
    n = int.from_bytes(b, "big")
    return _F64.unpack((n ^ _SIGN if n & _SIGN else n ^ ((1 << 64) - 1)).to_bytes(8, "big"))[0]


def ckpt_metric_key(fields, metric: float, step: int, ino: int) -> bytes:
    return ckpt_prefix(fields) + _f64_key(metric) + _U64.pack(step) + _U64.pack(ino)


def decode_ckpt_metric_key(key: bytes) -> tuple[tuple[str, ...], float, int, int]:
    """(fields, metric, step, inode) of a ``ckpt_metric`` key."""
    n = len(key)
    fields = decode_ckpt_fields(key, CKPT_METRIC_TRAILER)
    metric = _f64_from_key(bytes(key[n - 24 : n - 16]))
    return fields, metric, _U64.unpack_from(key, n - 16)[0], _U64.unpack_from(key, n - 8)[0]


def encode_ckpt(commit: int, time_ns: int, metric: float | None, doc: dict) -> bytes:
    head = _CKPT_HEAD.pack(commit, time_ns, float("nan") if metric is None else metric)
    text = _json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return head + text.encode("utf-8", "surrogateescape")


def decode_ckpt_head(b: bytes) -> tuple[int, int, float | None]:
    """(commit, time ns, metric or None) of a ``ckpts`` value, without parsing its JSON."""
    commit, time_ns, metric = _CKPT_HEAD.unpack_from(b)
    return commit, time_ns, None if metric != metric else metric


def decode_ckpt(b: bytes) -> tuple[int, int, float | None, dict]:
    """(commit, time ns, metric or None, document) of a ``ckpts`` value."""
    try:
        doc = _json.loads(bytes(b[_CKPT_HEAD.size :]).decode("utf-8", "surrogateescape"))
    except ValueError as e:
        raise CorruptData(f"checkpoint record does not parse ({e}); run `chunkfs meta scan`") from None
    return (*decode_ckpt_head(b), doc)


def encode_registry_settings(settings: dict) -> bytes:
    return _json.dumps(settings, sort_keys=True).encode()


def decode_registry_settings(b: bytes) -> dict:
    return _json.loads(b)


# -- tiers (docs/tiers.md; the "Tiers" section above) ---------------------------------

META_UPLOAD_ERROR = b"upload_error"

NO_TIER = 255
_I64 = struct.Struct(">q")
_COPY = struct.Struct(">q32s")
_MOVE = struct.Struct(">Bq")
_RUN = struct.Struct(">qqB")


def encode_i64(n: int) -> bytes:
    return _I64.pack(n)


def decode_i64(b: bytes) -> int:
    return _I64.unpack(b)[0]


def pack_tier_key(pack: bytes, tier: int) -> bytes:
    return bytes(pack) + bytes((tier,))


def decode_pack_tier_key(key: bytes) -> tuple[bytes, Tier]:
    return bytes(key[:PACK_ID_LEN]), Tier(key[PACK_ID_LEN])


def encode_copy(verified_ns: int, digest: bytes) -> bytes:
    return _COPY.pack(verified_ns, digest)


def decode_copy(b: bytes) -> tuple[int, bytes]:
    return _COPY.unpack(b)


def encode_move(kind: int, started_ns: int) -> bytes:
    return _MOVE.pack(kind, started_ns)


def decode_move(b: bytes) -> tuple[int, int]:
    return _MOVE.unpack(b)


def group_key(group: str) -> bytes:
    return group.encode("utf-8", "surrogateescape")


def decode_group_key(key: bytes) -> str:
    return bytes(key).decode("utf-8", "surrogateescape")


def encode_run(completed_ns: int, last_read_ns: int, held: int) -> bytes:
    return _RUN.pack(completed_ns, last_read_ns, held)


def decode_run(b: bytes) -> tuple[int, int, int]:
    return _RUN.unpack(b)


def encode_pin(pinned_ns: int, chunks: list[bytes]) -> bytes:
    return _I64.pack(pinned_ns) + b"".join(chunks)


def decode_pin(b: bytes) -> tuple[int, list[bytes]]:
    body = bytes(b[8:])
    if len(body) % CHUNK_ID_LEN:
        raise CorruptData("pin entry of a wrong length; run `chunkfs unpin` and pin again")
    return _I64.unpack_from(b)[0], [body[i : i + CHUNK_ID_LEN] for i in range(0, len(body), CHUNK_ID_LEN)]


def encode_upload_error(time_ns: int, message: str) -> bytes:
    return _I64.pack(time_ns) + message.encode("utf-8", "replace")


def decode_upload_error(b: bytes) -> tuple[int, str]:
    return _I64.unpack_from(b)[0], bytes(b[8:]).decode("utf-8", "replace")


# -- operations (the "Operations" section above) ---------------------------------------------

META_BACKUP = b"backup"
_REPLICA = struct.Struct(">qQ32s")
_BACKUP = struct.Struct(">QqQ")


def replica_id(url: str) -> bytes:
    """The 8-byte id of a replica location (its key part in ``replicas``)."""
    import blake3

    return blake3.blake3(url.encode()).digest()[:8]


def replica_key(pack: bytes, rid: bytes) -> bytes:
    return bytes(pack) + bytes(rid)


def decode_replica_key(key: bytes) -> tuple[bytes, bytes]:
    return bytes(key[:PACK_ID_LEN]), bytes(key[PACK_ID_LEN:])


def encode_replica(verified_ns: int, size: int, digest: bytes) -> bytes:
    return _REPLICA.pack(verified_ns, size, digest)


def decode_replica(b: bytes) -> tuple[int, int, bytes]:
    return _REPLICA.unpack(b)


def encode_drill(doc: dict) -> bytes:
    return _json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def decode_drill(b: bytes) -> dict:
    return _json.loads(bytes(b))


def encode_backup(generation: int, time_ns: int, txnid: int) -> bytes:
    return _BACKUP.pack(generation, time_ns, txnid)


def decode_backup(b: bytes) -> tuple[int, int, int]:
    return _BACKUP.unpack(b)


# -- garbage collection (the "Garbage collection" section above) -------------------------------

DATABASES += ("condemned", "gc_leases")

META_GC_EPOCH = b"gc_epoch"
_CONDEMNED_HEAD = struct.Struct(">Qq")
_LEASE = struct.Struct(">IQq")


def encode_condemned(epoch: int, condemned_ns: int, loc: ChunkLocation) -> bytes:
    return _CONDEMNED_HEAD.pack(epoch, condemned_ns) + encode_location(loc)


def decode_condemned(b: bytes) -> tuple[int, int, ChunkLocation]:
    epoch, ns = _CONDEMNED_HEAD.unpack_from(b)
    return epoch, ns, decode_location(bytes(b[_CONDEMNED_HEAD.size :]))


def encode_lease(pid: int, floor: int, heartbeat_ns: int, host: str) -> bytes:
    return _LEASE.pack(pid, floor, heartbeat_ns) + host.encode("utf-8", "replace")


def decode_lease(b: bytes) -> tuple[int, int, int, str]:
    pid, floor, beat = _LEASE.unpack_from(b)
    return pid, floor, beat, bytes(b[_LEASE.size :]).decode("utf-8", "replace")
