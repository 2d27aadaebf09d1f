"""Nodes of a shared repository on one machine, driven through the library: each "node" is a
repository directory of its own (its own hot tier and LMDB index), all on one S3 server;
``sync`` (``chunkfs sync``'s library call) moves changes between them."""

from __future__ import annotations

import os
from pathlib import Path

from chunkfs.ops import cluster as clusterop
from chunkfs.ops import tier, transfer
from chunkfs.repo import Repository
from helpers.tiers import s3_url, tiered_settings


def nodes(tmp_path: Path, endpoint: str, n: int = 2) -> tuple[str, list[Path]]:
    url = s3_url("cluster")
    settings = tiered_settings(endpoint, warm=url)
    clusterop.init_shared(tmp_path / "node0", settings).close()
    paths = [tmp_path / "node0"]
    for i in range(1, n):
        repo, _ = clusterop.join(tmp_path / f"node{i}", url, endpoint_url=endpoint)
        repo.close()
        paths.append(tmp_path / f"node{i}")
    return url, paths


def import_random(repo: Repository, tmp_path: Path, dest: str, size: int) -> bytes:
    """``size`` random bytes imported into the open ``repo`` as ``dest``; returns them."""
    data = os.urandom(size)
    src = tmp_path / f"src-{dest.strip('/').replace('/', '-')}"
    src.write_bytes(data)
    transfer.import_tree(repo, src, dest)
    return data


def sync(path: Path) -> tier.SyncResult:
    return tier.sync(path)


def export(path: Path, src: str, out: Path) -> Path:
    with Repository(path, writable=False) as repo:
        transfer.export_tree(repo, src, out)
    return out
