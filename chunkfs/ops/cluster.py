"""Creating, joining and inspecting a repository shared by several nodes (docs/multinode.md).

``init_shared`` makes a new repository whose warm tier (an S3 bucket with conditional
writes) also holds the shared log and configuration; ``join`` makes another node's
repository of the same id from that configuration — starting from the creating node's
newest metadata backup when it can — and replays the log into it. Every node then
writes locally and publishes (``chunkfs.cluster``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path

from chunkfs import config
from chunkfs.cluster import entries
from chunkfs.cluster.log import CONFIG, SharedLog
from chunkfs.cluster.node import NO_COLD, new_node_id, record
from chunkfs.errors import AlreadyExists, ChunkfsError, NotFound, UsageError
from chunkfs.index import Index
from chunkfs.repo import Repository
from chunkfs.store.backends.base import Backend
from chunkfs.store.backends.local import LocalBackend
from chunkfs.store.maintenance.metabackup import fetch_latest
from chunkfs.store.tiering.tiers import Tiers
from chunkfs.types import PackState, Tier

log = logging.getLogger(__name__)


def _shared_log(path: Path, settings: config.Settings) -> SharedLog:
    """The shared log of the warm tier ``settings`` name, after checking that it can be one."""
    if not settings.tiers.warm.startswith("s3://"):
        raise UsageError("a shared repository needs an S3 warm tier: --warm s3://bucket/prefix (and --endpoint-url)")
    if settings.tiers.cold:
        raise UsageError(NO_COLD)
    shared = SharedLog(Tiers(path, settings, None, LocalBackend(path / settings.tiers.hot)).backend(Tier.WARM))
    shared.probe()
    return shared


def init_shared(path: Path, settings: config.Settings, hot: Path | None = None) -> Repository:
    """A new repository at ``path`` that other nodes can join (``join``); returned open."""
    shared = _shared_log(Path(path), settings)
    if shared.backend.exists(CONFIG):
        raise AlreadyExists(
            f"{settings.tiers.warm}: already holds a shared repository; make this node a member of it with "
            f"`chunkfs join {path} {settings.tiers.warm}`, or choose another bucket or prefix for a new one"
        )
    repo = Repository.create(
        path, hot=hot, settings=settings, cluster=record(new_node_id(), settings.tiers.warm, origin=True)
    )
    try:
        shared.create(repo.index.repo_id, config.render(repo.settings))
        repo.cluster.heartbeat()  # a member from now on: a gc anywhere waits for it (docs/multinode.md)
    except BaseException:
        repo.close()
        raise
    return repo


def join(
    path: Path,
    url: str,
    *,
    endpoint_url: str = "",
    region: str = "",
    hot: Path | None = None,
) -> tuple[Repository, int]:
    """A new repository at ``path`` on this node, a member of the shared repository at ``url``;
    returned open, with the log applied up to the returned position."""
    reach = {"warm": url, "endpoint_url": endpoint_url, "region": region}
    probe = dataclasses.replace(config.Settings(), tiers=dataclasses.replace(config.Settings().tiers, **reach))
    doc = _shared_log(Path(path), probe).config()
    settings = config.parse_text(doc["settings"], f"{url}/cluster/config.json")
    tiers = dataclasses.replace(settings.tiers, hot=config.TierSettings().hot, **reach)
    settings = dataclasses.replace(settings, tiers=tiers)
    repo = Repository.create(
        path, hot=hot, settings=settings, repo_id=bytes.fromhex(doc["repo_id"]),
        cluster=record(new_node_id(), url, origin=False),
    )  # fmt: skip
    try:
        with repo.index.read() as t:
            member = t.cluster_get()
        backend = repo.cluster.shared.backend
        repo.close()
        if _start_from_backup(Path(path), backend, member):
            log.info("join: started from the newest metadata backup of %s", url)
        repo = Repository(path)
        position = repo.cluster.replayer.catch_up()
        repo.cluster.heartbeat()  # a member from now on: a gc anywhere waits for it (docs/multinode.md)
    except BaseException:
        repo.close()
        raise
    return repo, position


def _start_from_backup(path: Path, backend: Backend, member: dict) -> bool:
    """Put the metadata backup of the shared repository that holds the most of the log (any
    member may have uploaded it) in place of the new, empty index, so that the join replays
    only the log after it.

    Only a backup taken with nothing left to publish is used: every change in it is then in
    the log, and every chunk it names is on warm. Its node's own state goes: the membership
    (this node's record instead), the upload queue, gc leases, its retiring packs, and every pack that lived on
    that node's disk only (with the chunk locations in them; none is named by a published
    change); packs with a warm copy get warm as their home, and every pack of that node is
    marked as its (foreign here: only it deletes them). False (and nothing changed) when
    there is no usable backup: the join then replays the whole log."""
    with tempfile.TemporaryDirectory(prefix="join-", dir=path) as d:
        try:
            fetch_latest(backend, Path(d), joining=True)
        except ChunkfsError as e:  # none, damaged, unreachable: the log has everything
            log.info("join: no metadata backup to start from (%s); replaying the whole log", e)
            return False
        index = Index(Path(d) / "index")
        try:
            with index.read() as t:
                usable = t.cluster_get() is not None and t.outbox_count() == 0 and t.applied_get() > 0
            if not usable:
                log.info("join: the metadata backup has changes not yet published; replaying the whole log")
                return False
            with index.write() as t:
                owner = t.cluster_get()["node"]
                t.clear_upload_queue()
                t.gc_state_clear()
                t.cluster_put(member)
                t.cluster_error_put(0, None)
                for pack in t.retiring():  # that node's to delete, once every member relocated
                    t.retiring_delete(pack)
                gone = set()
                for pack, info in list(t.packs()):
                    if t.foreign(pack):  # another member's already
                        continue
                    if info.tier == Tier.HOT:
                        if info.state != PackState.SEALED or t.copy_get(pack, Tier.WARM) is None:
                            gone.add(bytes(pack))
                            t.pack_delete(pack)
                            continue
                        t.pack_put(pack, dataclasses.replace(info, tier=Tier.WARM))
                        t.copy_delete(pack, Tier.WARM)
                    t.foreign_put(pack, owner)  # only that node may delete it (cluster/maintenance.py)
                for chunk, loc in list(t.chunks()):
                    if bytes(loc.pack) in gone:
                        t.chunk_delete(chunk)
        finally:
            index.close()
        os.replace(Path(d) / "index" / "data.mdb", path / "index" / "data.mdb")
    return True


def forget_node(repo: Repository, node: str) -> int:
    """Remove member ``node`` of the shared repository for good (it is gone: a lost machine), so
    that gc sweeps no longer wait for it; returns the log position of the ``forget`` entry.

    The entry is a fence: every node ignores that member's entries after it, and the member
    itself, if it runs again, stops there (its unpublished changes are lost; what it published
    stays). Its packs become this node's (``Replayer._forget``): its sweeps delete them once empty."""
    cluster = repo.cluster
    if cluster is None:
        raise UsageError(f"{repo.path}: not a shared repository (docs/multinode.md)")
    if node == cluster.node:
        raise UsageError(f"{node}: that is this node; run `chunkfs forget-node` on another member")
    members = cluster.shared.members()
    with repo.index.read() as t:
        if node in t.forgotten():
            raise AlreadyExists(f"node {node}: already forgotten")
    if node not in members:
        raise NotFound(f"node {node}: not a member of {cluster.url} (members: {', '.join(sorted(members)) or 'none'})")
    position = cluster.publish_maintenance(entries.FORGET, {"node": node})
    cluster.shared.forget(node)
    return position
