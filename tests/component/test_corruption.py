"""Damaged packs: a reader gets the right bytes or an error naming the chunk and the pack, never
wrong bytes; an export that meets damage leaves no partial file behind."""

from __future__ import annotations

import os

import pytest
from helpers.checkpoints import base_model, save
from helpers.repos import data_chunks, extents_of, location, pack_path

from chunkfs.errors import CorruptData
from chunkfs.ops import transfer


@pytest.fixture
def imported(tmp_path, repo, repo_path, reopen):
    """A checkpoint imported and committed; returns (source, the reopened repository, a middle chunk)."""
    src = save(base_model(), tmp_path / "model.safetensors", "safetensors")
    transfer.import_tree(repo, src, "/m")
    chunks = data_chunks(extents_of(repo, "/m"))
    chunk = chunks[len(chunks) // 2]
    repo.close()
    return src, reopen, chunk


def _damage(repo_path, reopen, chunk, how):
    with reopen(writable=False) as r:
        loc = location(r, chunk)
        pfile = pack_path(r, loc.pack)
    how(pfile, loc)
    return loc


def _read_all(r, path="/m"):
    content = r.file_content(r.ns.resolve(path))
    return content.read(0, content.size)


def test_flipped_byte_in_a_chunk_raises_corrupt_data_naming_chunk_and_pack(tmp_path, imported, repo_path):
    src, reopen, chunk = imported

    def flip(pfile, loc):
        data = bytearray(pfile.read_bytes())
        data[loc.offset + loc.stored_len // 2] ^= 0x01
        pfile.write_bytes(bytes(data))

    loc = _damage(repo_path, reopen, chunk, flip)
    with reopen(writable=False) as r:
        with pytest.raises(CorruptData) as e:
            _read_all(r)
        assert chunk.hex() in str(e.value) and loc.pack.hex() in str(e.value)
        assert "\n" not in str(e.value)
        dest = tmp_path / "out" / "m"
        dest.parent.mkdir()
        with pytest.raises(CorruptData):
            transfer.export_tree(r, "/m", dest)
        assert list(dest.parent.iterdir()) == [], "no partial or temporary file is left"
        # the undamaged chunks still read, and a read that avoids the chunk succeeds
        content = r.file_content(r.ns.resolve("/m"))
        assert content.read(0, 1000) == src.read_bytes()[:1000]


def test_truncated_pack_raises_corrupt_data(tmp_path, imported, repo_path):
    _src, reopen, chunk = imported

    def truncate(pfile, loc):
        os.truncate(pfile, loc.offset + loc.stored_len // 2)

    loc = _damage(repo_path, reopen, chunk, truncate)
    with reopen() as r:  # a writable open (recovery) does not touch a sealed pack
        with pytest.raises(CorruptData) as e:
            _read_all(r)
        assert chunk.hex() in str(e.value) and loc.pack.hex() in str(e.value)
        assert "truncated" in str(e.value)


def test_missing_pack_raises_a_clear_error(tmp_path, imported, repo_path):
    _src, reopen, chunk = imported
    loc = _damage(repo_path, reopen, chunk, lambda pfile, loc: pfile.unlink())
    with reopen(writable=False) as r:
        with pytest.raises(CorruptData) as e:  # EIO through the mount, not ENOENT
            _read_all(r)
        message = str(e.value)
        assert "missing" in message and loc.pack.hex() in message
        # it names the first chunk of the file that lived in that pack
        in_pack = [c for c in data_chunks(extents_of(r, "/m")) if location(r, c).pack == loc.pack]
        assert in_pack[0].hex() in message


def test_wrong_bytes_in_a_compressed_chunk_are_caught(tmp_path, repo, reopen):
    """A zstd chunk whose frame still decodes but to other bytes: the hash check catches it."""
    src = tmp_path / "zeroish.bin"
    block = bytearray(200_000)
    block[::1000] = os.urandom(200)
    src.write_bytes(bytes(block))
    transfer.import_tree(repo, src, "/z")
    (chunk,) = data_chunks(extents_of(repo, "/z"))[:1]
    loc = location(repo, chunk)
    assert loc.flags & 0x0F == 1, "the zero-heavy chunk is stored compressed"
    repo.close()
    pfile = pack_path(repo, loc.pack)
    data = bytearray(pfile.read_bytes())
    data[loc.offset + loc.stored_len - 8] ^= 0xFF  # inside the frame's literals / checksum
    pfile.write_bytes(bytes(data))
    with reopen(writable=False) as r, pytest.raises(CorruptData, match=chunk.hex()):
        _read_all(r, "/z")
