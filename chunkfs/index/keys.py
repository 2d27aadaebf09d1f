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
    the pack record header. flags: low nibble compression (0 none, 1 zstd, 2/3
    byte planes + zstd), high nibble kind (0 full, 1 delta: see ``deltas``).

``deltas``    chunk id (32) → base chunk id (32).
    One per chunk stored as a delta (its record's first 32 bytes name the same
    base; engine/codec.py): the base must stay while the delta does, so gc's
    mark keeps the bases of live deltas (and theirs), and resurrecting a delta
    resurrects its bases. Written in the transaction that switches the delta's
    location in (store/maintenance/rewrite.py), which requires both chunks in
    ``chunks``; removed when the delta chunk is swept; ``index rebuild`` reads
    it back from the records.

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
    value: format u8 | extent count u32 | extents, each: length | chunk id (32);
    format 1: length u32; format 2 (written only when an extent is 4 GiB or more:
    a hole): length u64.
    Extents are contiguous from offset 0; their lengths sum to the file size. A
    chunk id of 32 zero bytes is a hole (reads as zeros): one extent of any length. Manifests are immutable:
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

``unencoded`` pack id (16) → moved ns i64.
    A pack on the warm tier whose chunks are still as ingest stored them: it
    was evicted from hot under disk pressure (a plain move, no CPU) before its
    run completed. When the run completes, the lifecycle re-encodes it like
    the run's hot packs (``lifecycle.plan``). Added by the move, inherited by
    the packs a gc repack of it writes, dropped with the pack and when it
    leaves warm.

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
    (store/maintenance/replicas.py). The replica id is the first 8 bytes of the BLAKE3 of
    the replica's URL as configured (``replica_id``), so reordering the list
    keeps the entries. Written only after the object's size and BLAKE3 were
    checked on the replica; a hint for reads and repairs, which verify every
    chunk they take from it. Entries of a pack that left the index are stale
    (the replicator drops them).

``drills``    started ns u64 → compact JSON object of one `chunkfs drill` result
    (path, commit, source, files, bytes, seconds, verdict, problems…),
    oldest first; `chunkfs drill --history` lists them.

``meta/backup`` → generation u64 | time ns i64 | LMDB txn id u64 of the last metadata
    backup this repository uploaded (store/maintenance/metabackup.py); absent: never.
    Stored outside the backup's own snapshot semantics: the backup written as
    generation N contains generation N-1 here.

Cluster (docs/multinode.md): a repository shared by several nodes through its warm tier.

``meta/cluster`` → compact JSON ``{"node": hex id, "url": warm tier URL, "joined_ns": …}``:
    present only in a shared repository (``chunkfs init --shared``, ``chunkfs join``);
    its namespace changes are journaled into ``outbox`` and published to the log.

``meta/cluster_applied`` → u64: the last log entry this node has applied (its own
    entries included); absent: none.

``meta/cluster_error`` → time ns i64 | message (UTF-8): the last failure to reach the shared
    log, cleared by the next success (absent: none) — like ``meta/upload_error``.

``meta/cluster_gc`` → compact JSON ``{"round": log position, "epoch": gc epoch, "seq": outbox
    sequence}``: the newest gc entry of the log this node applied, the local
    ``meta/gc_epoch`` its condemnations got, and the outbox's newest record then (its
    "keep" of the chunks this node still references among them). The heartbeat says
    the round is *ready* once those records are published and no write window opened
    before it is still open (cluster/maintenance.py). Absent: none applied.

``meta/forgotten/<node id>`` → time ns i64: a member removed for good (``chunkfs
    forget-node``, a log entry): its entries after that one are ignored here.

``meta/foreign/<pack id>`` → node id (UTF-8; the node whose log entry named it first, or
    whose backup a join started from, or that forgot that node): a pack another node wrote. Only a pack's own node deletes its objects (this node's index does not
    know every chunk in a foreign pack); applying a sweep entry here only forgets it.

``meta/retiring/<pack id>`` → journaled ns i64 | log position u64: this node's pack whose
    chunks a re-encoding moved (store/maintenance/rewrite.py) while other nodes may still
    read its warm object: kept on warm until every member has applied the ``relocate``
    change journaled at that time (position: the log entry this node had applied when it
    saw the change published, 0 until then), then deleted (cluster/maintenance.py).

``meta/cluster_repack`` → time ns i64: when this node applied a sweep entry whose packs it
    has not yet looked at for repacking (its tier mover rewrites those of its own packs that
    the sweep left mostly dead, through relocate changes; cluster/mover.py). Absent:
    none due.

``outbox``    sequence u64 → time ns i64 | compact JSON object of one namespace change.
    Written in the transaction of the change itself (``namespace/journal.py``), so a
    change is never committed without its journal entry; removed in the transaction
    that records its log entry as applied. Oldest first; paths are UTF-8 with
    surrogateescape, as JSON strings.

Long keys. LMDB keys are at most 511 bytes (``MAX_KEY``), but paths reach PATH_MAX
(4096) and a checkpoint key holds several path components. Two encodings keep every
key short and still ordered by its leading bytes; the full value goes to ``long_keys``:

* a registry *field* (``ckpts``, ``ckpt_run``, ``ckpt_metric``) longer than
  ``FIELD_MAX`` bytes is stored as its first ``FIELD_PREFIX`` bytes | 0x01 | 32 hex
  digits of its BLAKE3: exactly ``FIELD_MAX + 1`` bytes, a length no field stored as
  itself has. With at most ``types.MAX_LEVELS`` levels a key stays under ``MAX_KEY``.
* a *path* key (``runs``, ``pins``) longer than ``PATH_KEY_MAX`` bytes is stored as its
  first ``PATH_PREFIX`` bytes | 0x00 | 32 hex digits of its BLAKE3 (paths never
  contain 0x00).

``long_keys``  shortened form → the full bytes. Written with every key that holds a
    shortened form (idempotent: the same input always gives the same form), never
    deleted (a few hundred bytes per distinct long name). Reads of keys turn
    shortened forms back into the full names through it; a prefix scan for a field
    longer than ``FIELD_PREFIX`` scans by its first ``FIELD_PREFIX`` bytes and keeps
    the records whose full field matches (``Txn`` does both).

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
    One per process that writes chunks (store/pack/store.py). ``floor``: the
    gc epoch at the start of the oldest write window (an open file being
    written) of that process; chunks condemned at an epoch ≥ some live floor
    may still be referenced by a commit to come, and keep their bytes.
    Written before the process's first dedup lookup, refreshed at every
    flush, removed at close; gc removes leases of dead processes.

``meta/gc_epoch`` → u64: number of condemn transactions so far (absent: 0).

``meta/seal_request`` → i64 ns: when a gc last asked the writing processes to seal their
open packs (so that it can reclaim the dead bytes in them); each writer seals them
once per request (``PackStore.answer_seal_request``). Absent: never.
"""

from __future__ import annotations

import math
import struct

import blake3

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
    "meta", "chunks", "deltas", "packs", "inodes", "dirents", "parents", "manifests", "xattrs",  # the tree and the store
    "commits", "dirhist", "inohist", "tags",  # "History"
    "ckpts", "ckpt_ino", "ckpt_run", "ckpt_metric",  # "Registry"
    "uploads", "copies", "moves", "unencoded", "runs", "pins", "counters",  # "Tiers"
    "replicas", "drills",  # "Operations"
    "condemned", "gc_leases",  # "Garbage collection"
    "outbox",  # "Cluster"
    "long_keys",  # "Long keys"
)  # fmt: skip
"""Every named database of the environment, in the order of the sections above."""

META_FORMAT = b"format"
META_REPO_ID = b"repo_id"
META_NEXT_INODE = b"next_inode"
META_NEXT_MANIFEST = b"next_manifest"
META_NEXT_COMMIT = b"next_commit"
META_CLUSTER = b"cluster"
META_CLUSTER_APPLIED = b"cluster_applied"
META_CLUSTER_ERROR = b"cluster_error"
META_CLUSTER_GC = b"cluster_gc"
META_FOREIGN = b"foreign/"
META_FORGOTTEN = b"forgotten/"
META_RETIRING = b"retiring/"
META_CLUSTER_REPACK = b"cluster_repack"

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_CHUNK = struct.Struct(f">{PACK_ID_LEN}sQIIB")
_PACK = struct.Struct(">BBQIQ")
_INODE = struct.Struct(">IIIIQqqqIQ")
_EXTENT = struct.Struct(f">I{CHUNK_ID_LEN}s")
_EXTENT_WIDE = struct.Struct(f">Q{CHUNK_ID_LEN}s")
_MANIFEST_HEAD = struct.Struct(">BI")
MANIFEST_FORMAT = 1
MANIFEST_FORMAT_WIDE = 2


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
    """Format 1 (u32 lengths) when every extent fits, else format 2 (u64 lengths: a big hole)."""
    wide = any(e.length > 0xFFFFFFFF for e in extents)
    fmt, ext = (MANIFEST_FORMAT_WIDE, _EXTENT_WIDE) if wide else (MANIFEST_FORMAT, _EXTENT)
    out = bytearray(_MANIFEST_HEAD.pack(fmt, len(extents)))
    for e in extents:
        out += ext.pack(e.length, e.chunk)
    return bytes(out)


def decode_manifest(b: bytes) -> list[Extent]:
    fmt, count = _MANIFEST_HEAD.unpack_from(b)
    ext = {MANIFEST_FORMAT: _EXTENT, MANIFEST_FORMAT_WIDE: _EXTENT_WIDE}.get(fmt)
    if ext is None or len(b) != _MANIFEST_HEAD.size + count * ext.size:
        raise CorruptData(f"manifest of unknown format {fmt} or wrong length; run `chunkfs fsck`")
    return [Extent(n, c) for n, c in ext.iter_unpack(b[_MANIFEST_HEAD.size :])]


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

import json as _json

META_REGISTRY = b"registry"

CKPT_TRAILER = 16  # step u64 | inode u64 after the fields
CKPT_METRIC_TRAILER = 24  # metric f64 | step u64 | inode u64
_CKPT_HEAD = struct.Struct(">Qqd")
_F64 = struct.Struct(">d")
_SIGN = 1 << 63


MAX_KEY = 511
"""LMDB's key size limit (MDB_MAXKEYSIZE of the library py-lmdb bundles)."""
FIELD_MAX = 72
"""With at most ``types.MAX_LEVELS`` (6) levels, 6 × (FIELD_MAX + 2) + 24 < MAX_KEY."""
FIELD_PREFIX = FIELD_MAX - 32
PATH_KEY_MAX = 400
PATH_PREFIX = PATH_KEY_MAX - 40


def _digest_hex(b: bytes) -> bytes:
    return blake3.blake3(b).hexdigest(16).encode()


def _raw_field(name: str) -> bytes:
    b = name.encode("utf-8", "surrogateescape")
    if b"\x00" in b:
        raise ValueError(f"a checkpoint key field cannot contain NUL: {name!r}")
    return b


def field_key(name: str) -> bytes:
    """A registry field as stored in keys: itself, or shortened when longer than ``FIELD_MAX``."""
    b = _raw_field(name)
    return b if len(b) <= FIELD_MAX else b[:FIELD_PREFIX] + b"\x01" + _digest_hex(b)


def is_short_field(b: bytes) -> bool:
    """Whether a stored field is a shortened form (see "Long keys")."""
    return len(b) == FIELD_MAX + 1


def long_fields(fields) -> list[tuple[bytes, bytes]]:
    """(shortened form, full bytes) of each field of ``fields`` that keys store shortened."""
    return [(field_key(f), _raw_field(f)) for f in fields if len(_raw_field(f)) > FIELD_MAX]


def ckpt_prefix(fields, open_last: bool = False) -> bytes:
    """Key prefix of the records whose first levels are ``fields``.

    With ``open_last`` the last field is left unterminated: the prefix then also
    matches records whose field at that level merely starts with it. An open
    field longer than ``FIELD_PREFIX`` is cut to that length (the caller filters:
    ``open_prefix_is_exact``).
    """
    if open_last and fields:
        *head, last = fields
        return b"".join(field_key(f) + b"\x00" for f in head) + _raw_field(last)[:FIELD_PREFIX]
    return b"".join(field_key(f) + b"\x00" for f in fields)


def open_prefix_is_exact(fields, open_last: bool) -> bool:
    """Whether every key under ``ckpt_prefix(fields, open_last)`` really matches (no filtering needed)."""
    return not (open_last and fields and len(_raw_field(fields[-1])) > FIELD_PREFIX)


def path_key(path: str) -> bytes:
    """A path as a ``runs``/``pins`` key: itself, or shortened when longer than ``PATH_KEY_MAX``."""
    b = path.encode("utf-8", "surrogateescape")
    return b if len(b) <= PATH_KEY_MAX else b[:PATH_PREFIX] + b"\x00" + _digest_hex(b)


def is_short_path(key: bytes) -> bool:
    return b"\x00" in key


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
    return field_key(run) + b"\x00"


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
    return commit, time_ns, None if math.isnan(metric) else metric


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


def encode_retiring(journaled_ns: int, position: int) -> bytes:
    return _I64.pack(journaled_ns) + _U64.pack(position)


def decode_retiring(b: bytes) -> tuple[int, int]:
    return _I64.unpack_from(b)[0], _U64.unpack_from(b, _I64.size)[0]


def decode_path(b: bytes) -> str:
    """A path (or a field) from its full bytes (``long_keys`` value, or a key that is not shortened)."""
    return bytes(b).decode("utf-8", "surrogateescape")


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


def encode_failure(time_ns: int, message: str) -> bytes:
    """``meta/upload_error`` and ``meta/cluster_error``: when, and what went wrong."""
    return _I64.pack(time_ns) + message.encode("utf-8", "replace")


def decode_failure(b: bytes) -> tuple[int, str]:
    return _I64.unpack_from(b)[0], bytes(b[8:]).decode("utf-8", "replace")


# -- operations (the "Operations" section above) ---------------------------------------------

META_BACKUP = b"backup"
_REPLICA = struct.Struct(">qQ32s")
_BACKUP = struct.Struct(">QqQ")


def replica_id(url: str) -> bytes:
    """The 8-byte id of a replica location (its key part in ``replicas``)."""
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


META_GC_EPOCH = b"gc_epoch"
META_SEAL_REQUEST = b"seal_request"
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


# -- cluster --------------------------------------------------------------------------

_OUTBOX_TIME = struct.Struct(">q")


def encode_outbox(time_ns: int, op: dict) -> bytes:
    return _OUTBOX_TIME.pack(time_ns) + _json.dumps(op, separators=(",", ":")).encode()


def decode_outbox(b: bytes) -> tuple[int, dict]:
    try:
        return _OUTBOX_TIME.unpack_from(b)[0], _json.loads(bytes(b[_OUTBOX_TIME.size :]))
    except (struct.error, ValueError) as e:
        raise CorruptData(f"damaged outbox record: {e}") from None


def encode_cluster(doc: dict) -> bytes:
    return _json.dumps(doc, separators=(",", ":")).encode()


def decode_cluster(b: bytes) -> dict:
    try:
        return _json.loads(bytes(b))
    except ValueError as e:
        raise CorruptData(f"damaged meta/cluster record: {e}") from None
