"""Repositories for the library-level suites: small settings, the repository fixtures, inspection,
and comparing what comes back out.

Chunks are 64 KiB (the smallest ``chunking.chunk_size`` the config accepts) with 4 KiB
``min_chunk``, and packs are sealed at 1 MiB, so a few MiB exercise many chunks, several packs
and the tiny-piece merging of the chunker.

Fixtures (a suite's conftest imports those it uses): ``repo_path``; ``make_repo(**kw)``, which
creates the repository at ``repo_path`` with ``repo_settings(**kw)`` — ``small_settings`` unless
the suite's conftest overrides the ``repo_settings`` fixture (the gc suite does) — and closes
whatever it opened after the test.
"""

from __future__ import annotations

import filecmp
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chunkfs import config
from chunkfs.ops import stats, transfer
from chunkfs.repo import Repository
from chunkfs.store.pack.files import pack_name
from chunkfs.types import HOLE, ChunkLocation, Extent

CHUNK = 64 << 10
MIN_CHUNK = 4 << 10


def small_settings(chunk_size: int = CHUNK, min_chunk: int = MIN_CHUNK, **sections) -> config.Settings:
    return config.Settings(
        chunking=config.ChunkingSettings(chunk_size=chunk_size, min_chunk=min_chunk),
        packs=sections.pop("packs", config.PackSettings(target_size=1 << 20)),
        **sections,
    )


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def repo_settings() -> Callable[..., config.Settings]:
    """What ``make_repo(**kw)`` creates the repository with: ``repo_settings(**kw)``."""
    return small_settings


@pytest.fixture
def make_repo(repo_path: Path, repo_settings) -> Iterator[Callable[..., Repository]]:
    """``make_repo(**kw)`` creates the repository at ``repo_path`` with ``repo_settings(**kw)``."""
    yield from closing(lambda **kw: Repository.create(repo_path, settings=repo_settings(**kw)))


def closing(opener: Callable[..., Repository]) -> Iterator[Callable[..., Repository]]:
    """Yield ``opener``, remembering what it opens; close all of it afterwards (a no-op for those closed)."""
    opened: list[Repository] = []

    def open_(*args, **kwargs) -> Repository:
        repo = opener(*args, **kwargs)
        opened.append(repo)
        return repo

    yield open_
    for repo in opened:
        repo.close()


# -- comparing ----------------------------------------------------------------------------------


def assert_same_file(a: Path, b: Path) -> None:
    assert a.stat().st_size == b.stat().st_size, f"{b}: size {b.stat().st_size}, expected {a.stat().st_size}"
    assert filecmp.cmp(a, b, shallow=False), f"{b} differs from {a}"


def same_tree(a: Path, b: Path) -> None:
    """The directory trees ``a`` and ``b`` hold the same names, kinds and bytes."""
    cmp = filecmp.dircmp(a, b)
    assert not (cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files), cmp.report()
    for sub in cmp.common_dirs:
        same_tree(a / sub, b / sub)
    for name in cmp.common_files:  # dircmp compares shallowly: compare the bytes
        assert filecmp.cmp(a / name, b / name, shallow=False), f"{b / name} differs"


def roundtrip(repo: Repository, src: Path, dest: str, out: Path) -> Path:
    """Import ``src`` as ``dest``, export it to ``out``, check the bytes are identical."""
    transfer.import_tree(repo, src, dest)
    transfer.export_tree(repo, dest, out)
    assert_same_file(src, out)
    return out


# -- inspection ---------------------------------------------------------------------------------


def stored_bytes(repo: Repository) -> int:
    return stats.collect(repo).stored_bytes


def extents_of(repo: Repository, path: str) -> list[Extent]:
    return repo.ns.extents(repo.ns.resolve(path))


def location(repo: Repository, chunk: bytes) -> ChunkLocation:
    with repo.index.read() as t:
        loc = t.chunk_get(chunk)
    assert loc is not None, f"chunk {chunk.hex()} not indexed"
    return loc


def pack_path(repo: Repository, pack: bytes) -> Path:
    return repo.hot_path / pack_name(pack)


def data_chunks(extents: list[Extent]) -> list[bytes]:
    return [e.chunk for e in extents if e.chunk != HOLE]


def count_chunk_hashing(monkeypatch) -> list[int]:
    """From now on (for the test), ``[n]``: the bytes that got a chunk hash — chunks written or
    deduplicated; a spliced chunk (an unchanged tensor of an incremental save) gets none."""
    from chunkfs.engine import codec

    counted = [0]
    real = codec.chunk_id

    def counting(data):
        counted[0] += memoryview(data).nbytes
        return real(data)

    monkeypatch.setattr(codec, "chunk_id", counting)
    return counted
