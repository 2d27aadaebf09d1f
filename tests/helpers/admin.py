"""Helpers of the admin tests: replicated repositories and tampering with stored objects."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from chunkfs import config
from chunkfs.ops import tier as tierop
from chunkfs.repo import Repository
from chunkfs.store.pack.files import pack_name
from chunkfs.types import HOLE, Tier
from helpers.s3servers import BUCKET
from helpers.tiers import import_run, s3_url, tiered_settings, write_run


def admin_settings(moto, rclone=None, *, cold: bool = False, **sections) -> config.Settings:
    """A warm tier on moto (and a cold one), a replica on rclone (another endpoint), no background timers."""
    if rclone is not None:
        sections["replication"] = config.ReplicationSettings(
            replicas=(s3_url("replica"),), endpoint_url=rclone.endpoint, interval=0
        )
    sections.setdefault("backup", config.BackupSettings(interval=0))
    return tiered_settings(moto.endpoint, cold=s3_url("cold") if cold else "", **sections)


def make_runs(repo: Repository, src: Path, runs=("runA", "runB", "runC"), steps: int = 2) -> dict[str, Path]:
    """Import runs of checkpoints under /m/; return repository path → local source directory."""
    out = {}
    for n, run in enumerate(runs):
        local = write_run(src, run, steps=steps, seed=n)
        import_run(repo, local, f"/m/{run}")
        out[f"/m/{run}"] = local
    repo.packs.seal_all()
    return out


def to_tier(repo: Repository, paths, tier: Tier) -> None:
    for p in paths:
        tierop.move(repo, p, tier)
    repo.drop_caches()


def key_of(url: str, name: str) -> str:
    prefix = urlsplit(url).path.strip("/")
    return f"{prefix}/{name}" if prefix else name


def s3_get(server, url: str, name: str) -> bytes:
    return server.client().get_object(Bucket=BUCKET, Key=key_of(url, name))["Body"].read()


def s3_put(server, url: str, name: str, data: bytes) -> None:
    server.client().put_object(Bucket=BUCKET, Key=key_of(url, name), Body=data)


def s3_delete(server, url: str, name: str) -> None:
    server.client().delete_object(Bucket=BUCKET, Key=key_of(url, name))


def packs_with_files(repo: Repository) -> dict[bytes, set[str]]:
    """pack → the current repository paths of the files that need it: a chunk of theirs is in it,
    or the base a delta chunk of theirs is stored against (docs/tiers.md, "Delta chunks")."""
    out: dict[bytes, set[str]] = {}

    def walk(path: str) -> None:
        ino = repo.ns.resolve(path)
        rec = repo.ns.getattr(ino)
        if rec.mode & 0o040000:
            for name, _child, _ in repo.ns.readdir(ino):
                walk(f"{path.rstrip('/')}/{os.fsdecode(name)}")
            return
        with repo.index.read() as t:
            for chunk in t.with_bases({e.chunk for e in repo.ns.extents(ino)} - {HOLE}):
                out.setdefault(t.chunk_get(chunk).pack, set()).add(path)

    walk("/")
    return out


def first_chunk_offset(repo: Repository, pack: bytes) -> int:
    with repo.index.read() as t:
        return min(loc.offset for _, loc in t.chunks() if loc.pack == pack)


def flip_byte(server, url: str, pack: bytes, offset: int) -> None:
    name = pack_name(pack)
    data = bytearray(s3_get(server, url, name))
    data[offset] ^= 0xFF
    s3_put(server, url, name, bytes(data))

