"""Helpers of the gc tests: small repositories written through the library API (no FUSE).

Chunks are 64 KiB and packs seal at 1 MiB (``repos.small_settings``), so a few MiB give many
packs; file contents are built from 64 KiB blocks of seeded random bytes, so which chunks two
files share is known exactly (fixed-size chunking of unknown formats).
"""

from __future__ import annotations

import random
import stat
from pathlib import Path

from chunkfs import config
from chunkfs.errors import NotFound
from chunkfs.repo import Repository
from chunkfs.types import PackState, Tier
from helpers.repos import CHUNK, small_settings

BLOCK = CHUNK


def gc_settings(**gc) -> config.GcSettings:
    """A gc that waits for nothing (no grace, no orphan age), and ``gc``."""
    return config.GcSettings(grace=0, orphan_age=0, **gc)


def settings(**gc) -> config.Settings:
    """Small chunks and packs, ``gc_settings(**gc)``."""
    return small_settings(gc=gc_settings(**gc))


def block(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOCK)


def content(*seeds: int) -> bytes:
    return b"".join(block(s) for s in seeds)


def _dir(repo: Repository, path: str) -> int:
    ino = 1
    for name in [p for p in path.split("/") if p]:
        try:
            ino, _ = repo.ns.lookup(ino, name.encode())
        except NotFound:
            ino, _ = repo.ns.mkdir(ino, name.encode(), 0o755, 0, 0)
    return ino


def write(repo: Repository, path: str, data: bytes) -> int:
    """Create or overwrite the file at ``path`` with ``data``; a new version."""
    parent_path, name = path.rsplit("/", 1)
    parent = _dir(repo, parent_path)
    try:
        ino, _ = repo.ns.lookup(parent, name.encode())
    except NotFound:
        ino, _ = repo.ns.mknod(parent, name.encode(), stat.S_IFREG | 0o644, 0, 0)
    fc = repo.file_content(ino)
    fc.truncate(0)
    fc.write(0, data)
    repo.commit_file(ino, fc)
    return ino


def read(repo: Repository, path: str) -> bytes:
    ino = repo.ns.resolve(path)
    return bytes(repo.content_of(repo.ns.extents(ino)).read(0, repo.ns.getattr(ino).size))


def read_at(repo: Repository, path: str, commit: int) -> bytes:
    v = repo.history.resolve_at(path, commit)
    return bytes(repo.content_of(repo.history.extents(v)).read(0, v.record.size))


def rmtree(repo: Repository, path: str) -> None:
    parent_path, name = path.rsplit("/", 1)
    parent = repo.ns.resolve(parent_path or "/")
    ino, rec = repo.ns.lookup(parent, name.encode())
    if stat.S_ISDIR(rec.mode):
        for child, *_ in list(repo.ns.readdir(ino)):
            rmtree(repo, f"{path}/{child.decode()}")
        repo.ns.rmdir(parent, name.encode())
    else:
        repo.ns.unlink(parent, name.encode())


def hot_bytes(repo_path: Path) -> int:
    return sum(p.stat().st_size for p in (repo_path / "hot").rglob("*.pack"))


def checkpoints_on_tiers(repo: Repository, seed: int) -> dict[str, bytes]:
    """Six checkpoints (contents from ``seed`` on), sealed, their packs moved to cold and warm in turn."""
    files = {}
    for step in range(6):
        path = f"/m/run/checkpoint-{step}/model.bin"
        files[path] = content(*range(4), *(seed + step * 100 + k for k in range(20)))
        write(repo, path, files[path])
    repo.packs.seal_all()
    with repo.index.read() as t:
        sealed = sorted((i.created_ns, p) for p, i in t.packs() if i.state == PackState.SEALED)
    for n, (_, pack) in enumerate(sealed):
        repo.tiers.move_pack(pack, Tier.WARM if n % 2 else Tier.COLD)
    return files


def drop_checkpoints(repo: Repository, files: dict[str, bytes], count: int = 4) -> None:
    """Remove the first ``count`` checkpoints of ``checkpoints_on_tiers`` (and forget their files)."""
    for step in range(count):
        rmtree(repo, f"/m/run/checkpoint-{step}")
        del files[f"/m/run/checkpoint-{step}/model.bin"]
