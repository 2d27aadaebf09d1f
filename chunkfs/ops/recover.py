"""``chunkfs recover --from URL NEWREPO``: a repository rebuilt from the object store alone.

For the loss of a node (its LMDB index and its hot tier). The steps:

1. Take the newest usable metadata backup at URL (store/maintenance/metabackup.py: a
   consistent LMDB copy and the repository's chunkfs.toml; a damaged newest one
   falls back to the one before).
2. Write NEWREPO: that index, that config with the hot tier at ``NEWREPO/hot``
   and, when URL is not the configured warm tier (recovering from a replica),
   URL as the warm tier (and no longer as a replica). ``--endpoint-url``
   replaces the S3 endpoint.
3. Re-home every pack the backup knew: a pack that lived on hot survives if it
   had a verified warm copy (the write-back upload) — it is re-homed to warm;
   a warm or cold pack missing from its tier is copied back from a replica
   that has it. The write-back queue and tier notes of the dead node are
   dropped.
4. Index every pack newer than the backup (on the warm and cold tiers, then
   on replicas, copied to warm): its footer gives its chunks. Versions
   committed after the backup are lost (their namespace entries are not in
   it), but their chunks are indexed, so a later re-import deduplicates.
   A shared repository's location (docs/multinode.md) is refused: `chunkfs join` rebuilds
   a node from the shared log, and a private copy working on the same location could
   delete what the other nodes need.
5. Packs that are nowhere are dropped from the index; the versions needing
   their chunks are reported (``chunkfs fsck`` names them). Optionally
   (``verify``) a full fsck runs on the result.

Every version the backup holds whose chunks all survive reads back bit-identical:
chunks are content-addressed and verified on every read.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from chunkfs import clock, config
from chunkfs.cluster.log import CONFIG
from chunkfs.errors import AlreadyExists, ChunkfsError, NotFound, UsageError
from chunkfs.index import Index
from chunkfs.store.backends.url import open_backend
from chunkfs.store.maintenance.metabackup import fetch_latest
from chunkfs.store.pack.files import delta_bases, pack_id_from_name, pack_name, read_entries
from chunkfs.types import ChunkLocation, PackInfo, PackState, Tier

log = logging.getLogger(__name__)


@dataclass
class RecoverResult:
    repository: str
    backup: str = ""
    generation: int = 0
    backup_time_ns: int = 0
    last_commit: int = 0
    packs: int = 0
    rehomed_from_hot: int = 0
    restored_from_replica: int = 0
    newer_packs: int = 0
    newer_chunks: int = 0
    lost_packs: list[str] = field(default_factory=list)
    lost_chunks: int = 0
    seconds: float = 0.0
    fsck: dict | None = None


def recover(from_url: str, new_repo: Path, *, endpoint_url: str | None = None, verify: bool = False) -> RecoverResult:
    started = time.monotonic()
    new_repo = Path(new_repo).resolve()
    if new_repo.exists() and any(new_repo.iterdir()):
        raise AlreadyExists(f"{new_repo}: not empty; recover into a new or empty directory")
    result = RecoverResult(str(new_repo))
    source_settings = config.TierSettings(endpoint_url=endpoint_url or "")
    source = open_backend(from_url, source_settings, "", new_repo)
    if source.exists(CONFIG):
        raise UsageError(
            f"{from_url}: holds a repository shared by several nodes; a node is rebuilt by joining it again: "
            f"`chunkfs join {new_repo} {from_url}` (a private copy here could delete what the others still need)"
        )
    new_repo.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="chunkfs-recover-", dir=new_repo) as d:
            d = Path(d)
            info = fetch_latest(source, d)
            result.backup, result.generation = info["name"], info["generation"]
            result.backup_time_ns, result.last_commit = info["time_ns"], info.get("last_commit", 0)
            cfg = d / config.CONFIG_NAME
            settings = config.load(cfg) if cfg.exists() else config.Settings()
            settings = _adjust(settings, from_url, endpoint_url)
            (new_repo / "index").mkdir()
            shutil.move(str(d / "index" / "data.mdb"), new_repo / "index" / "data.mdb")
        (new_repo / settings.tiers.hot).mkdir(parents=True, exist_ok=True)
        (new_repo / config.CONFIG_NAME).write_text(config.render(settings))
        _rebuild(new_repo, settings, result)
    except BaseException:
        if not (new_repo / config.CONFIG_NAME).exists():
            shutil.rmtree(new_repo, ignore_errors=True)  # nothing usable yet: leave no half repository
        raise
    from chunkfs.repo import Repository  # opening it checks it is usable (and seals/drops dead open packs)

    with Repository(new_repo) as repo:
        if verify:
            from chunkfs.ops.fsck import fsck

            result.fsck = fsck(repo).as_dict()
    result.seconds = time.monotonic() - started
    return result


def _adjust(settings: config.Settings, from_url: str, endpoint_url: str | None) -> config.Settings:
    tiers = dataclasses.replace(settings.tiers, hot="hot")
    if endpoint_url:
        tiers = dataclasses.replace(tiers, endpoint_url=endpoint_url)
    replication = settings.replication
    if from_url.rstrip("/") != settings.tiers.warm.rstrip("/"):
        tiers = dataclasses.replace(tiers, warm=from_url)
        replication = dataclasses.replace(
            replication, replicas=tuple(r for r in replication.replicas if r.rstrip("/") != from_url.rstrip("/"))
        )
    return dataclasses.replace(settings, tiers=tiers, replication=replication)


def _rebuild(repo_path: Path, settings: config.Settings, result: RecoverResult) -> None:
    index = Index(repo_path / "index")
    try:
        backends = {}
        for tier, url in ((Tier.WARM, settings.tiers.warm), (Tier.COLD, settings.tiers.cold)):
            if url:
                storage = settings.tiers.warm_storage_class if tier == Tier.WARM else settings.tiers.cold_storage_class
                backends[tier] = open_backend(url, settings.tiers, storage, repo_path)
        rs = settings.tiers
        if settings.replication.endpoint_url:
            rs = dataclasses.replace(rs, endpoint_url=settings.replication.endpoint_url)
        replicas = [open_backend(url, rs, "", repo_path) for url in settings.replication.replicas]
        with index.write() as t:
            t.clear_upload_queue()
            t.gc_state_clear()  # the backup's writer leases belong to the lost node's processes
            packs = dict(t.packs())
            copies = {(p, tier) for p, tier, _, _ in t.copies()}
        result.packs = len(packs)
        present = {tier: _listing(b) for tier, b in backends.items()}
        lost = []
        changes: dict[bytes, PackInfo] = {}
        for pack, info in packs.items():
            name = pack_name(pack)
            if info.tier == Tier.HOT:
                if info.state == PackState.SEALED and (pack, Tier.WARM) in copies and name in present.get(Tier.WARM, ()):
                    changes[pack] = dataclasses.replace(info, tier=Tier.WARM)
                    result.rehomed_from_hot += 1
                else:
                    lost.append(pack)
                continue
            if name in present.get(info.tier, ()):
                continue
            if info.tier in backends and _from_replica(replicas, backends[info.tier], name, repo_path):
                result.restored_from_replica += 1
                continue
            lost.append(pack)
        # packs written after the backup: on the tiers, then only on a replica
        known = set(packs)
        found: dict[bytes, tuple[Tier, int, list, dict]] = {}
        for tier, b in backends.items():
            for name in present[tier]:
                pack = pack_id_from_name(name)
                if pack is None or pack in known or pack in found:
                    continue
                try:
                    entries, sealed = read_entries(b, name)
                except ChunkfsError as e:
                    log.warning("recover: pack %s on %s is not usable: %s", name, b.url, e)
                    continue
                if sealed:
                    found[pack] = (tier, b.size(name), entries, delta_bases(b, name, entries))
        if Tier.WARM in backends:
            for r in replicas:
                for name in _listing(r):
                    pack = pack_id_from_name(name)
                    if pack is None or pack in known or pack in found:
                        continue
                    if not _from_replica([r], backends[Tier.WARM], name, repo_path):
                        continue
                    entries, sealed = read_entries(backends[Tier.WARM], name)
                    if sealed:
                        bases = delta_bases(backends[Tier.WARM], name, entries)
                        found[pack] = (Tier.WARM, backends[Tier.WARM].size(name), entries, bases)
        now = clock.now_ns()
        lost_set = set(lost)
        with index.write() as t:
            for pack, info in changes.items():
                t.pack_put(pack, info)
                t.copy_delete(pack, Tier.WARM)
            for pack, (tier, size, entries, bases) in found.items():
                t.pack_put(pack, PackInfo(tier, PackState.SEALED, size, len(entries), "", now))
                result.newer_packs += 1
                for e in entries:
                    loc = t.chunk_get(e.chunk)
                    if loc is None or loc.pack in lost_set:
                        t.chunk_put(e.chunk, ChunkLocation(pack, e.offset, e.stored_len, e.raw_len, e.flags))
                        t.delta_delete(e.chunk)
                        if e.chunk in bases:
                            t.delta_put(e.chunk, bases[e.chunk])
                        result.newer_chunks += 1
            for pack in lost:
                t.pack_delete(pack)
                for tier, _, _ in t.copies_of(pack):
                    t.copy_delete(pack, tier)
            result.lost_chunks = sum(1 for _, loc in t.chunks() if loc.pack in lost_set)
        result.lost_packs = [p.hex() for p in lost]
    finally:
        index.close()


def _listing(backend) -> set[str]:
    try:
        return {n for n in backend.list("packs/") if pack_id_from_name(n) is not None}
    except NotFound:
        return set()


def _from_replica(replicas, dest, name: str, repo_path: Path) -> bool:
    """Copy object ``name`` from the first replica that has it to ``dest``; True if done."""
    for r in replicas:
        try:
            data = r.get(name)
        except ChunkfsError:
            continue
        tmp = repo_path / f".recover-{os.getpid()}.pack"
        digest = blake3.blake3(data).digest()
        try:
            tmp.write_bytes(data)
            dest.put_file(name, tmp, blake3_digest=digest)
        finally:
            tmp.unlink(missing_ok=True)
        dest.verify(name, digest, len(data))
        log.info("recover: %s restored from replica %s", name, r.url)
        return True
    return False
