"""PackWriter's vectored writes: a record's header and chunk go out in one ``pwritev``.

A disk that is nearly full writes short, a piece at a time and then fails: the
pack must come out byte for byte as if written whole, or — on the failure — end
exactly where the last good record ended, never with a torn record behind it.
"""

from __future__ import annotations

import errno
import os

import blake3
import pytest

from chunkfs.errors import NoSpace
from chunkfs.store.pack import files as packs
from chunkfs.store.pack import format as packfmt
from chunkfs.store.pack.files import PackWriter

PACK = bytes(range(16))


def short_pwritev(limit: int, fail_after: int | None = None):
    """An ``os.pwritev`` that writes at most ``limit`` bytes a call; ENOSPC once ``fail_after`` are written."""
    written = 0

    def pwritev(fd, buffers, offset):
        nonlocal written
        data = b"".join(bytes(b) for b in buffers)[:limit]
        if fail_after is not None:
            if written >= fail_after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = data[: fail_after - written]
        written += len(data)
        return os.pwrite(fd, data, offset)

    return pwritev


def expected_pack(chunks: list[bytes], sealed: bool) -> bytes:
    out = bytearray(packfmt.encode_header(PACK))
    entries = []
    for data in chunks:
        out += packfmt.encode_record(blake3.blake3(data).digest(), 0, len(data), len(data))
        entries.append(packfmt.Entry(blake3.blake3(data).digest(), len(out), len(data), len(data), 0))
        out += data
    if sealed:
        out += packfmt.encode_footer(entries, len(out))
    return bytes(out)


def append(w: PackWriter, data: bytes) -> packfmt.Entry | None:
    return w.append(blake3.blake3(data).digest(), data, len(data), 0)


@pytest.mark.parametrize("limit", [1, 7, 44, 45, 1 << 30])
def test_short_writes_are_completed(tmp_path, monkeypatch, limit):
    monkeypatch.setattr(packs.os, "pwritev", short_pwritev(limit))
    chunks = [b"", b"x", bytes(range(256)) * 3, memoryview(b"view" * 10)]
    w = PackWriter(PACK, tmp_path / "p.pack", "g")
    entries = [append(w, bytes(c)) for c in chunks]
    w.seal()
    data = (tmp_path / "p.pack").read_bytes()
    assert data == expected_pack([bytes(c) for c in chunks], sealed=True)
    assert [bytes(data[e.offset : e.offset + e.stored_len]) for e in entries] == [bytes(c) for c in chunks]


def test_a_failed_append_leaves_no_torn_record(tmp_path, monkeypatch):
    w = PackWriter(PACK, tmp_path / "p.pack", "g")
    append(w, b"a" * 100)
    good = (tmp_path / "p.pack").read_bytes()
    monkeypatch.setattr(packs.os, "pwritev", short_pwritev(10, fail_after=60))
    with pytest.raises(NoSpace):
        append(w, b"b" * 100)
    assert (tmp_path / "p.pack").read_bytes() == good == expected_pack([b"a" * 100], sealed=False)
    monkeypatch.undo()
    append(w, b"c" * 10)  # the pack stays usable: the next record starts where the good one ended
    w.seal()
    assert (tmp_path / "p.pack").read_bytes() == expected_pack([b"a" * 100, b"c" * 10], sealed=True)


def test_nothing_is_appended_behind_the_footer(tmp_path):
    """A sealed pack stays open (and locked) until the index says it is sealed; a thread that
    looked the writer up before the seal must be sent elsewhere, not append behind the footer
    (a chunk there lies past the size the index records: tier moves and repacks would drop it)."""
    w = PackWriter(PACK, tmp_path / "p.pack", "g")
    append(w, b"a" * 100)
    size = w.seal()
    assert w.append(blake3.blake3(b"late").digest(), b"late", 4, 0) is None
    assert (tmp_path / "p.pack").stat().st_size == size == w.size
    assert (tmp_path / "p.pack").read_bytes() == expected_pack([b"a" * 100], sealed=True)
