"""Index encodings (index/keys.py): every value round-trips, and key byte order is the order
the range scans rely on (numeric for integers, newest-first for history)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkfs.errors import CorruptData
from chunkfs.index import keys
from chunkfs.types import HOLE, ChunkLocation, Extent, PackInfo, PackState, Tier

u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
i64 = st.integers(-(1 << 63), (1 << 63) - 1)
chunk_ids = st.binary(min_size=32, max_size=32)
pack_ids = st.binary(min_size=16, max_size=16)
names = st.binary(min_size=1, max_size=255).filter(lambda b: b"/" not in b and b"\x00" not in b)
# pack groups are repository paths, decoded from name bytes with surrogateescape
groups = st.lists(names, max_size=4).map(
    lambda parts: "/" + "/".join(p.decode("utf-8", "surrogateescape") for p in parts)
)


@settings(deadline=None)
@given(u32)
def test_u32(n):
    assert keys.decode_u32(keys.u32(n)) == n and len(keys.u32(n)) == 4


@settings(deadline=None)
@given(u64, u64)
def test_u64_round_trips_and_sorts_numerically(a, b):
    assert keys.decode_u64(keys.u64(a)) == a
    assert (keys.u64(a) < keys.u64(b)) == (a < b)


@settings(deadline=None)
@given(pack_ids, u64, u32, u32, u8)
def test_chunk_location(pack, offset, stored, raw, flags):
    loc = ChunkLocation(pack, offset, stored, raw, flags)
    value = keys.encode_location(loc)
    assert len(value) == 16 + 8 + 4 + 4 + 1
    assert keys.decode_location(value) == loc


@settings(deadline=None)
@given(st.sampled_from(Tier), st.sampled_from(PackState), u64, u32, groups, u64)
def test_pack_info(tier, state, size, chunks, group, created):
    info = PackInfo(tier, state, size, chunks, group, created)
    assert keys.decode_pack(keys.encode_pack(info)) == info


def test_pack_group_that_is_not_utf8():
    info = PackInfo(Tier.HOT, PackState.OPEN, 32, 0, "/run\udcff", 1)
    value = keys.encode_pack(info)
    assert value.endswith(b"/run\xff")
    assert keys.decode_pack(value) == info


inode_fields = st.tuples(u32, u32, u32, u32, u64, i64, i64, i64, u32, u64)


@settings(deadline=None)
@given(inode_fields, st.binary(max_size=300))
def test_inode(fields, target):
    fields_back, target_back = keys.decode_inode(keys.encode_inode(fields, target))
    assert (fields_back, target_back) == (fields, target)


@settings(deadline=None)
@given(u64, names, names)
def test_dirent_keys_group_by_parent_and_sort_by_name(parent, a, b):
    ka, kb = keys.dirent_key(parent, a), keys.dirent_key(parent, b)
    assert keys.dirent_name(ka) == a
    assert ka.startswith(keys.u64(parent))
    assert (ka < kb) == (a < b)


@settings(deadline=None)
@given(u64, u64, names)
def test_parent_key(child, parent, name):
    key = keys.parent_key(child, parent, name)
    assert key.startswith(keys.u64(child))
    assert keys.decode_parent_key(key) == (parent, name)


@settings(deadline=None)
@given(st.lists(st.tuples(u32, chunk_ids | st.just(HOLE)), max_size=50))
def test_manifest(extents):
    ext = [Extent(n, c) for n, c in extents]
    value = keys.encode_manifest(ext)
    assert len(value) == 5 + 36 * len(ext)
    assert keys.decode_manifest(value) == ext


def test_manifest_of_unknown_format_or_length_is_corrupt():
    value = keys.encode_manifest([Extent(10, HOLE)])
    with pytest.raises(CorruptData):
        keys.decode_manifest(b"\x02" + value[1:])
    with pytest.raises(CorruptData):
        keys.decode_manifest(value[:-1])
    with pytest.raises(CorruptData):
        keys.decode_manifest(value + b"\x00")


@settings(deadline=None)
@given(u64, names)
def test_xattr_key(ino, name):
    key = keys.xattr_key(ino, name)
    assert key[:8] == keys.u64(ino) and key[8:] == name


# -- history --------------------------------------------------------------------------------


@settings(deadline=None)
@given(u64, names, u64)
def test_dirhist_key_round_trip(parent, name, commit):
    key = keys.dirhist_key(parent, name, commit)
    assert key.startswith(keys.dirhist_prefix(parent, name))
    assert keys.decode_dirhist_key(key) == (parent, name, commit)


@settings(deadline=None)
@given(u64, names, u64, u64)
def test_dirhist_sorts_each_names_entries_newest_first(parent, name, c1, c2):
    k1, k2 = keys.dirhist_key(parent, name, c1), keys.dirhist_key(parent, name, c2)
    assert (k1 < k2) == (c1 > c2)


@settings(deadline=None)
@given(u64, names, names, u64, u64)
def test_dirhist_entries_of_a_name_are_contiguous(parent, a, b, ca, cb):
    """No key of another name falls between two keys of one name (the 0x00 separator)."""
    if a == b:
        return
    lo, hi = sorted([keys.dirhist_key(parent, a, 0), keys.dirhist_key(parent, a, (1 << 64) - 1)])
    other = keys.dirhist_key(parent, b, cb)
    assert not lo <= other <= hi


@settings(deadline=None)
@given(u64, u64, u64)
def test_inohist_key(ino, c1, c2):
    k1, k2 = keys.inohist_key(ino, c1), keys.inohist_key(ino, c2)
    assert keys.decode_inohist_commit(k1) == c1
    assert (k1 < k2) == (c1 > c2)


@settings(deadline=None)
@given(st.binary(min_size=32, max_size=32), u32, inode_fields, st.binary(max_size=100))
def test_version(blake, uid, fields, target):
    value = keys.encode_version(blake, uid, fields, target)
    assert keys.decode_version(value) == (blake, uid, fields, target)


@settings(deadline=None)
@given(i64)
def test_commit_time(ns):
    assert keys.decode_commit_time(keys.encode_commit_time(ns)) == ns


@settings(deadline=None)
@given(u64, i64, st.text(max_size=100).filter(lambda t: all(not 0xD800 <= ord(c) <= 0xDFFF for c in t)))
def test_tag(commit, created, path):
    assert keys.decode_tag(keys.encode_tag(commit, created, path)) == (commit, created, path)


def test_every_database_is_listed_once():
    assert len(set(keys.DATABASES)) == len(keys.DATABASES)
    for db in ("meta", "chunks", "packs", "inodes", "dirents", "parents", "manifests", "xattrs"):
        assert db in keys.DATABASES


# -- long keys (keys.py, "Long keys") ----------------------------------------------------------------

fields_ = st.binary(min_size=0, max_size=4000).filter(lambda b: b"\x00" not in b).map(
    lambda b: b.decode("utf-8", "surrogateescape")
)


@settings(deadline=None)
@given(st.lists(fields_, min_size=1, max_size=6), u64, u64)
def test_checkpoint_keys_fit_lmdb_whatever_the_fields(fields, step, ino):
    from chunkfs.types import MAX_LEVELS

    assert len(fields) <= MAX_LEVELS
    for key in (keys.ckpt_key(fields, step, ino), keys.ckpt_metric_key(fields, -1.5, step, ino),
                keys.ckpt_run_key(fields, step, ino)):  # fmt: skip
        assert len(key) <= keys.MAX_KEY
    decoded, s, i = keys.decode_ckpt_key(keys.ckpt_key(fields, step, ino))
    assert (s, i) == (step, ino)
    for got, want in zip(decoded, fields, strict=True):  # short fields as they are, long ones shortened
        b = want.encode("utf-8", "surrogateescape")
        assert got.encode("utf-8", "surrogateescape") == (b if len(b) <= keys.FIELD_MAX else keys.field_key(want))
    assert dict(keys.long_fields(fields)) == {
        keys.field_key(f): f.encode("utf-8", "surrogateescape") for f in fields if keys.is_short_field(keys.field_key(f))
    }


@settings(deadline=None)
@given(fields_, fields_)
def test_shortened_fields_are_distinct_and_keep_their_prefix(a, b):
    ka, kb = keys.field_key(a), keys.field_key(b)
    assert (ka == kb) == (a == b)
    assert keys.is_short_field(ka) == (len(a.encode("utf-8", "surrogateescape")) > keys.FIELD_MAX)
    raw = a.encode("utf-8", "surrogateescape")
    assert ka.startswith(raw[: keys.FIELD_PREFIX])  # prefix scans by the first FIELD_PREFIX bytes find it
    open_prefix = keys.ckpt_prefix((a,), open_last=True)
    assert keys.ckpt_key((a,), 1, 1).startswith(open_prefix)
    assert keys.open_prefix_is_exact((a,), True) == (len(raw) <= keys.FIELD_PREFIX)


@settings(deadline=None)
@given(st.lists(names, min_size=1, max_size=16))
def test_path_keys_fit_and_are_distinct(parts):
    path = "/" + "/".join(p.decode("utf-8", "surrogateescape") for p in parts)
    key = keys.path_key(path)
    assert len(key) <= keys.MAX_KEY
    raw = path.encode("utf-8", "surrogateescape")
    assert keys.is_short_path(key) == (len(raw) > keys.PATH_KEY_MAX)
    assert key == raw or key.startswith(raw[: keys.PATH_PREFIX])
    assert keys.path_key(path + "x") != key
