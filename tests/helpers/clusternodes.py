"""Nodes of a shared repository on one machine, driven through the library: each "node" is a
repository directory of its own (its own hot tier and LMDB index), all on one S3 server;
``sync`` (``chunkfs sync``'s library call) moves changes between them."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from chunkfs.ops import cluster as clusterop
from chunkfs.ops import gc, retention, tier, transfer
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


def sync_all(*paths: Path) -> None:
    for p in paths:
        sync(p)


def gc_on(path: Path, rounds: Callable[[], None], **rules) -> gc.GcResult:
    """``chunkfs gc`` on node ``path`` (no mount: it applies the log itself) with ``rules``, while
    ``rounds()`` plays the other nodes' sync threads until it returns."""
    out: dict = {}

    def run() -> None:
        try:
            with Repository(path) as repo:
                out["result"] = gc.run(repo, retention.rules_for(repo.settings, **rules), grace_s=0)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            out["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    while thread.is_alive():
        rounds()
        time.sleep(0.3)
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["result"]
