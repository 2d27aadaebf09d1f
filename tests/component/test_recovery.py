"""Crashes and a lost index: what the packs alone give back, and what the next open repairs.

A crash is a child process that writes through the library and leaves with
``os._exit`` (no close, no seal, no atexit: what ``kill -9`` leaves).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from helpers.checkpoints import base_model, save, step
from helpers.repos import assert_same_file, data_chunks, extents_of, location, pack_path

from chunkfs.errors import CorruptData
from chunkfs.index import Index
from chunkfs.ops import rebuild, stats, transfer
from chunkfs.store.pack import format as packfmt
from chunkfs.store.pack.files import read_entries
from chunkfs.types import PackState

CRASHING_WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from chunkfs.repo import Repository

    repo_path, committed, uncommitted_len, wipe = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    repo = Repository(Path(repo_path))
    ino, _ = repo.ns.mknod(1, b"committed", 0o100644, 0, 0)
    content = repo.file_content(ino)
    content.write(0, Path(committed).read_bytes())
    repo.commit_file(ino, content)  # durable and indexed; its pack stays open
    ino, _ = repo.ns.mknod(1, b"uncommitted", 0o100644, 0, 0)
    content = repo.file_content(ino)
    content.write(0, os.urandom(uncommitted_len))  # appended to the same pack, never flushed
    if wipe == "wipe":  # and the index loses every chunk and pack entry
        with repo.index.write() as t:
            t.clear_chunk_index()
    os._exit(0)
    """
)


def crash_while_writing(repo_path, committed, uncommitted_len: int, wipe: bool = False) -> None:
    args = [str(repo_path), str(committed), str(uncommitted_len), "wipe" if wipe else "keep"]
    subprocess.run([sys.executable, "-c", CRASHING_WRITER, *args], check=True, timeout=120)


def open_packs(repo_path) -> dict[bytes, int]:
    """Packs the index marks open, with their indexed sizes (read with the index API)."""
    index = Index(repo_path / "index", readonly=True)
    try:
        with index.read() as t:
            return {p: i.size for p, i in t.packs() if i.state == PackState.OPEN}
    finally:
        index.close()


def _series(tmp_path, n=3):
    sd = base_model()
    paths = []
    for i in range(n):
        sd = step(sd, ["head.weight"], seed=i) if i else sd
        fmt = "safetensors" if i % 2 == 0 else "torch"
        paths.append(save(sd, tmp_path / "src" / f"checkpoint-{i}" / f"model.{fmt}", fmt))
    return paths


def _import(repo, paths):
    for i, p in enumerate(paths):
        transfer.import_tree(repo, p, f"/run/checkpoint-{i}/{p.name}")


def _check_exports(repo, paths, out):
    out.mkdir(exist_ok=True)
    for i, p in enumerate(paths):
        dest = out / f"{i}-{p.name}"
        transfer.export_tree(repo, f"/run/checkpoint-{i}/{p.name}", dest)
        assert_same_file(p, dest)


# -- rebuilding the chunk index from the packs ------------------------------------------------


def test_rebuild_after_every_chunk_entry_is_deleted(tmp_path, repo):
    paths = _series(tmp_path)
    _import(repo, paths)
    before = stats.collect(repo)
    with repo.index.write() as t:
        for chunk, _ in list(t.chunks()):
            assert t.chunk_delete(chunk)
    repo.chunks.cache = type(repo.chunks.cache)(0)  # nothing served from memory
    with pytest.raises(CorruptData, match="not in the index"):
        transfer.export_tree(repo, f"/run/checkpoint-0/{paths[0].name}", tmp_path / "x")

    result = rebuild.rebuild(repo)
    assert result.damaged == [] and result.missing_chunks == 0 and result.unsealed_packs == 0
    assert (result.packs, result.chunks) == (before.packs, before.chunks)
    after = stats.collect(repo)
    assert (after.chunks, after.unique_bytes, after.stored_bytes, after.packs) == (
        before.chunks, before.unique_bytes, before.stored_bytes, before.packs,
    )  # fmt: skip
    _check_exports(repo, paths, tmp_path / "out")


def test_rebuild_gives_same_export_after_reopen(tmp_path, repo, reopen):
    paths = _series(tmp_path)
    _import(repo, paths)
    with repo.index.write() as t:
        t.clear_chunk_index()  # chunks and packs databases both gone
    repo.close()
    with reopen() as r:
        result = rebuild.rebuild(r)
        assert result.missing_chunks == 0 and not result.damaged
    with reopen(writable=False) as r:
        _check_exports(r, paths, tmp_path / "out")


def test_rebuild_recovers_a_pack_left_unsealed_by_a_crash(tmp_path, repo, repo_path, reopen):
    """The writer died after a commit and the index lost its entries: the pack has no footer,
    its records are walked, verified and indexed, a torn tail is ignored, and it gets sealed."""
    repo.close()
    committed = tmp_path / "committed.bin"
    committed.write_bytes(os.urandom(300_000))
    crash_while_writing(repo_path, committed, 200_000, wipe=True)
    (pack_file,) = list((repo_path / "hot").rglob("*.pack"))
    with open(pack_file, "ab") as f:  # a record torn mid-header
        f.write(b"CR\x00\x00" + os.urandom(20))
    assert not read_entries_of(pack_file)[1], "the crash left the pack without a footer"

    with reopen() as r:
        assert stats.collect(r).chunks == 0  # the index knows nothing of the pack
        result = rebuild.rebuild(r)
        assert (result.unsealed_packs, result.missing_chunks, result.damaged) == (1, 0, [])
        assert result.chunks >= len(data_chunks(extents_of(r, "/committed")))
        out = tmp_path / "committed.out"
        transfer.export_tree(r, "/committed", out)
        assert_same_file(committed, out)
        assert r.ns.getattr(r.ns.resolve("/uncommitted")).size == 0
    entries, sealed = read_entries_of(pack_file)
    assert sealed, "rebuild seals the recovered pack"
    assert all(e.offset + e.stored_len <= pack_file.stat().st_size for e in entries)


def read_entries_of(pack_file):
    from chunkfs.store.backends.local import LocalBackend

    root = pack_file.parent.parent.parent
    return read_entries(LocalBackend(root), str(pack_file.relative_to(root)))


# -- crash recovery at open ----------------------------------------------------------------


def test_open_truncates_and_seals_a_pack_left_open_with_torn_bytes(tmp_path, repo, repo_path, reopen):
    repo.close()
    committed = tmp_path / "committed.bin"
    committed.write_bytes(os.urandom(300_000))
    crash_while_writing(repo_path, committed, 250_000)
    (pack, indexed_size), = open_packs(repo_path).items()
    (pack_file,) = list((repo_path / "hot").rglob("*.pack"))
    assert pack_file.stat().st_size > indexed_size, "uncommitted records lie past the indexed size"
    with open(pack_file, "ab") as f:
        f.write(os.urandom(1000))  # and a torn write after them

    with reopen() as r:  # Repository() runs packs.recover()
        assert open_packs_now(r) == {}
        with r.index.read() as t:
            info = t.pack_get(pack)
        assert info.state == PackState.SEALED
        entries, sealed = read_entries_of(pack_file)
        assert sealed and pack_file.stat().st_size == info.size
        footer = entries[-1].offset + entries[-1].stored_len
        assert footer == indexed_size, "truncated to its indexed size before the footer was written"
        out = tmp_path / "committed.out"
        transfer.export_tree(r, "/committed", out)
        assert_same_file(committed, out)
        assert r.ns.getattr(r.ns.resolve("/uncommitted")).size == 0
        # the repository keeps working: new data goes to a new pack
        again = tmp_path / "again.bin"
        again.write_bytes(os.urandom(100_000))
        transfer.import_tree(r, again, "/again")
    with reopen() as r:  # and the recovered pack is a good pack to rebuild the index from
        result = rebuild.rebuild(r)
        assert (result.unsealed_packs, result.missing_chunks, result.damaged) == (0, 0, [])
    with reopen(writable=False) as r:
        transfer.export_tree(r, "/again", tmp_path / "again.out")
        assert_same_file(again, tmp_path / "again.out")
        transfer.export_tree(r, "/committed", tmp_path / "committed.out2")
        assert_same_file(committed, tmp_path / "committed.out2")


EMPTY_PACK_WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from chunkfs.repo import Repository

    repo = Repository(Path(sys.argv[1]))
    repo.chunks.put(os.urandom(5000), "/run")  # opens a pack (in the index at once), never flushed
    os._exit(0)
    """
)


def test_open_drops_a_new_pack_that_a_power_cut_left_empty(tmp_path, repo, repo_path, reopen):
    """The pack was in the index, its header never reached the disk: the next open must still work."""
    repo.close()
    subprocess.run([sys.executable, "-c", EMPTY_PACK_WRITER, str(repo_path)], check=True, timeout=120)
    ((pack, size),) = open_packs(repo_path).items()
    assert size == packfmt.HEADER.size
    (pack_file,) = list((repo_path / "hot").rglob("*.pack"))
    os.truncate(pack_file, 0)
    with reopen() as r:
        assert open_packs_now(r) == {}
        with r.index.read() as t:
            assert t.pack_get(pack) is None
        assert not pack_file.exists()
        src = tmp_path / "after.bin"
        src.write_bytes(os.urandom(100_000))
        transfer.import_tree(r, src, "/after.bin")
        transfer.export_tree(r, "/after.bin", tmp_path / "after.out")
        assert_same_file(src, tmp_path / "after.out")


def open_packs_now(r) -> dict:
    with r.index.read() as t:
        return {p: i for p, i in t.packs() if i.state == PackState.OPEN}


# -- damaged packs -------------------------------------------------------------------------


def test_rebuild_reports_a_bad_footer_checksum_and_keeps_the_records(tmp_path, repo):
    paths = _series(tmp_path, n=1)
    _import(repo, paths)
    chunk = data_chunks(extents_of(repo, f"/run/checkpoint-0/{paths[0].name}"))[0]
    pfile = pack_path(repo, location(repo, chunk).pack)
    data = bytearray(pfile.read_bytes())
    offset, *_ = packfmt.TRAILER.unpack_from(data, len(data) - packfmt.TRAILER.size)
    data[offset + 3] ^= 0xFF  # inside the first footer entry's chunk id
    pfile.write_bytes(bytes(data))

    result = rebuild.rebuild(repo)
    assert len(result.damaged) == 1
    assert pfile.stem in result.damaged[0] and "checksum" in result.damaged[0]
    assert result.missing_chunks == 0, "the records behind a bad footer are still good"
    _check_exports(repo, paths, tmp_path / "out")
    assert read_entries_of(pfile)[1], "re-sealed with a fresh footer"


def test_rebuild_reports_a_file_that_is_not_a_pack(tmp_path, repo):
    paths = _series(tmp_path, n=1)
    _import(repo, paths)
    bogus = repo.hot_path / "packs" / "00" / ("00" * 16 + ".pack")
    bogus.parent.mkdir(parents=True, exist_ok=True)
    bogus.write_bytes(b"definitely not a pack" * 10)
    result = rebuild.rebuild(repo)
    assert len(result.damaged) == 1 and "not a chunkfs pack" in result.damaged[0]
    assert result.missing_chunks == 0
    _check_exports(repo, paths, tmp_path / "out")
