"""``chunkfs status`` and ``chunkfs du``: tiers, backlogs, caches, activity; sizes per run.

``status`` reads the index and the cache directory only (no request to any
tier), so it answers at once whether or not the repository is mounted; the
activity figures are those every process saved (``counters``) plus this
process's own. The metrics endpoint (``chunkfs.metrics``) serves the same
figures.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field

from chunkfs import clock
from chunkfs.errors import ChunkfsError
from chunkfs.ops.stats import count_encoding
from chunkfs.ops.tier import _norm, open_packs, walk_files
from chunkfs.repo import Repository, lock_holder
from chunkfs.store.maintenance.metabackup import join_point
from chunkfs.store.tiering.uploads import backlog
from chunkfs.types import Tier, tier_name


@dataclass
class TierUsage:
    configured: bool
    location: str
    packs: int = 0  # packs whose home is this tier
    bytes: int = 0
    copies: int = 0  # extra verified copies of packs whose home is another tier
    copy_bytes: int = 0


def tier_usage(repo: Repository) -> dict[str, TierUsage]:
    usage = {
        tier_name(t): TierUsage(repo.tiers.configured(t), repo.tiers.url(t) if repo.tiers.configured(t) else "")
        for t in Tier
    }
    with repo.index.read() as t:
        sizes = {}
        for pack, info in t.packs():
            u = usage[tier_name(info.tier)]
            u.packs += 1
            u.bytes += info.size
            sizes[pack] = info.size
        for pack, tier, _, _ in t.copies():
            u = usage[tier_name(tier)]
            u.copies += 1
            u.copy_bytes += sizes.get(pack, 0)
    return usage


@dataclass
class Status:
    repository: str
    writer: str | None  # "pid N" of the process holding the repository lock (a mount, an import)
    tiers: dict[str, TierUsage]
    upload_backlog: dict
    upload_error: str | None
    moves_in_flight: int
    read_cache: dict
    pins: int
    runs_complete: int
    activity: dict[str, int] = field(default_factory=dict)
    replication: dict = field(default_factory=dict)  # lag: packs, bytes, oldest age, last error
    open_packs: dict = field(default_factory=dict)  # data not sealed yet (ops/tier.py OpenPacks), and why
    last_backup: dict = field(default_factory=dict)  # generation and time of the last metadata backup
    cluster: dict = field(default_factory=dict)  # a shared repository: this node, its backlog, every member

    def as_dict(self) -> dict:
        return asdict(self)


def status(repo: Repository) -> Status:
    now = clock.now_ns()
    b = backlog(repo.index)
    with repo.index.read() as t:
        error = t.upload_error()
        in_flight = sum(1 for _ in t.moves())
        pins = sum(1 for _ in t.pins())
        complete = sum(1 for _, rec in t.runs() if rec.completed_ns)
        backup = t.backup_get()
    cache_bytes, cache_chunks = repo.readcache.usage()
    waiting = open_packs(repo)
    return Status(
        repository=str(repo.path),
        writer=lock_holder(repo.path),
        tiers=tier_usage(repo),
        upload_backlog={"packs": b.packs, "bytes": b.bytes, "oldest_age_s": round(b.oldest_age_s(now), 1)},
        upload_error=error[1] if error else None,
        moves_in_flight=in_flight,
        read_cache={
            "dir": str(repo.readcache.root.parent),
            "bytes": cache_bytes,
            "chunks": cache_chunks,
            "limit": repo.readcache.capacity,
        },
        pins=pins,
        runs_complete=complete,
        activity=repo.counters(),
        replication=asdict(repo.replicas.lag()) if repo.replicas.configured else {},
        last_backup={"generation": backup[0], "age_s": round((now - backup[1]) / 1e9, 1)} if backup else {},
        open_packs=asdict(waiting) | {"why": waiting.describe()},
        cluster=_cluster(repo, now),
    )


def _cluster(repo: Repository, now: int) -> dict:
    """This node's log position and unpublished changes, and every member's last heartbeat with
    its age (a member silent for long is down, or cut off from the store)."""
    if repo.cluster is None:
        return {}
    out = repo.cluster.status().as_dict()
    for doc in out["members"].values():
        if "time_ns" in doc:
            doc["heartbeat_age_s"] = round((now - doc["time_ns"]) / 1e9, 1)
    try:  # where a new member's join starts (docs/multinode.md, "Joins and the log's length")
        joins = join_point(repo.cluster.shared.backend, repo.index.repo_id)
    except ChunkfsError:  # the store is down: the error above says so
        joins = None
    out["join_point"] = (
        {"position": joins.position, "backup": joins.name, "age_s": round((now - joins.time_ns) / 1e9, 1)}
        if joins else None
    )  # fmt: skip
    return out


@dataclass
class RunUsage:
    run: str
    files: int = 0
    logical_bytes: int = 0  # sizes of its files, as users see them
    stored: dict[str, int] = field(default_factory=dict)  # tier → bytes of the run's own packs there
    encodings: dict[str, dict[str, int]] = field(default_factory=dict)  # name → chunks, raw, stored (count_encoding)

    @property
    def stored_bytes(self) -> int:
        return sum(self.stored.values())

    @property
    def raw_bytes(self) -> int:
        """The raw size of the chunks in the run's packs (what they hold, before compression)."""
        return sum(e["raw"] for e in self.encodings.values())

    def as_dict(self) -> dict:
        return {**asdict(self), "stored_bytes": self.stored_bytes, "raw_bytes": self.raw_bytes}


def du(repo: Repository, path: str = "/") -> list[RunUsage]:
    """Per run under ``path``: files and logical bytes, the bytes of its packs per tier, and its
    chunks per encoding (raw and stored bytes: what compression and byte planes saved).

    A run's packs hold the data it brought: chunks it shares with earlier runs are
    counted where they were first stored (dedup), so ``stored`` can be far below
    ``logical``.
    """
    path = _norm(path)
    runs: dict[str, RunUsage] = {}
    for ino, _ in walk_files(repo, path):
        run = repo.ns.group_of(ino)
        u = runs.setdefault(run, RunUsage(run))
        u.files += 1
        u.logical_bytes += repo.ns.getattr(ino).size
    stored: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    encodings: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
    with repo.index.read() as t:
        groups = {}
        for pack, info in t.packs():
            stored[info.group][tier_name(info.tier)] += info.size
            groups[pack] = info.group
        for _, loc in t.chunks():
            count_encoding(encodings[groups.get(loc.pack, "")], loc)
    for run, by_tier in stored.items():
        if run in runs or (path != "/" and (run == path or run.startswith(path + "/"))) or path == "/":
            u = runs.setdefault(run, RunUsage(run))
            u.stored = dict(by_tier)
            u.encodings = dict(sorted(encodings.get(run, {}).items()))
    return [runs[r] for r in sorted(runs)]
