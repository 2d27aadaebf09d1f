"""Creating, joining and inspecting a repository shared by several nodes (docs/multinode.md).

``init_shared`` makes a new repository whose warm tier (an S3 bucket with conditional
writes) also holds the shared log and configuration; ``join`` makes another node's
repository of the same id from that configuration and replays the log into it. Every
node then writes locally and publishes (``chunkfs.cluster``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from chunkfs import config
from chunkfs.cluster.log import CONFIG, SharedLog
from chunkfs.cluster.node import new_node_id, record
from chunkfs.errors import AlreadyExists, UsageError
from chunkfs.repo import Repository
from chunkfs.store.backends.local import LocalBackend
from chunkfs.store.tiering.tiers import Tiers
from chunkfs.types import Tier


def _shared_log(path: Path, settings: config.Settings) -> SharedLog:
    """The shared log of the warm tier ``settings`` name, after checking that it can be one."""
    if not settings.tiers.warm.startswith("s3://"):
        raise UsageError("a shared repository needs an S3 warm tier: --warm s3://bucket/prefix (and --endpoint-url)")
    if settings.tiers.cold:
        raise UsageError(
            "a shared repository has no cold tier yet: tier moves to it are not coordinated between nodes "
            "(docs/multinode.md, 'What is not built')"
        )
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
        position = repo.cluster.replayer.catch_up()
    except BaseException:
        repo.close()
        raise
    return repo, position
