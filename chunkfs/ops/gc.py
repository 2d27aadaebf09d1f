"""``chunkfs gc``: drop versions no retention rule keeps, then reclaim the space nothing live uses.

The protocol (docs/gc.md has the full argument):

1. **Condemn** — one write transaction: evaluate retention (ops/retention.py),
   drop the unretained file versions and the manifests nothing references any
   more, mark every chunk referenced by a remaining version, a current inode
   or a pin, bump ``meta/gc_epoch`` to E and move every other chunk from
   ``chunks`` to ``condemned`` (epoch E). Dedup stops matching them at once;
   their bytes stay.
2. **Resurrect** — a writer that found one of them by dedup before E and commits
   it afterwards moves it back (``Txn.manifest_put``, ``PackStore.flush``).
3. **Sweep** — a condemned chunk whose epoch is below the floor of every live
   writer lease (``gc_leases``) and older than ``gc.grace`` can no longer be
   committed by anyone: one transaction forgets it.
4. **Packs** — under the tier lock, a sealed pack that no ``chunks`` or
   ``condemned`` entry locates in is deleted (every tier, every copy), one whose
   live fraction is under ``gc.repack_below`` is repacked (store/maintenance/sweep.py), pack
   objects and scratch files nothing explains are reclaimed.

In a repository shared by several nodes the same steps run on every node, driven
through the shared log (ops/shared_gc.py, cluster/maintenance.py).

Every step is idempotent and recomputed from the index, so a gc killed anywhere
is finished by the next (the tier lock's resume handles half-done deletes and
repacks). ``CHUNKFS_GC_HOOK=STEP`` (testing) kills the process with SIGKILL
when it reaches STEP (``condemned``, ``swept``, ``packs-unindexed``,
``repack-built``, ``repack-switched``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from chunkfs import clock
from chunkfs.errors import Conflict
from chunkfs.namespace import prune
from chunkfs.ops import retention, shared_gc
from chunkfs.repo import Repository, lock_holder
from chunkfs.store.maintenance import sweep
from chunkfs.store.pack.store import NO_WINDOW, lease_alive
from chunkfs.types import PackState, Tier, tier_name

log = logging.getLogger(__name__)

HOOK_ENV = "CHUNKFS_GC_HOOK"
SEAL_WAIT = 30.0
"""Seconds gc waits for the writers to seal their open packs (``_seal_open_packs``)."""
PRESSURE_REPACK = 0.95
"""While the hot disk is short of space, hot packs with 5% or more dead bytes are repacked."""
LOCK_NAME = "gc.lock"


def _hook(step: str) -> None:
    wanted = os.environ.get(HOOK_ENV)
    if wanted and wanted == step:
        log.warning("gc: %s=%s reached: killing myself", HOOK_ENV, step)
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class GcResult:
    dry_run: bool = False
    rules: list[str] | None = None
    versions_dropped: int = 0
    versions_kept: int = 0
    dropped: list[dict] = field(default_factory=list)  # path, commit, size of each dropped version
    checkpoints: list[dict] = field(default_factory=list)
    manifests_dropped: int = 0
    chunks_live: int = 0
    chunks_condemned: int = 0  # newly, this run
    chunks_resurrected: int = 0
    chunks_swept: int = 0
    chunks_waiting: int = 0  # condemned, bytes kept for a writer lease or the grace period
    bytes_freeable: int = 0  # stored bytes of the chunks nothing live references (dry run: would)
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    bytes_freed: int = 0  # pack bytes deleted minus bytes written by repacks, orphans included
    orphans: int = 0
    orphans_foreign: int = 0  # pack objects nothing here explains, not named as ours: left alone
    by_tier: dict = field(default_factory=dict)
    leases: list[dict] = field(default_factory=list)
    planned_deletes: list[str] = field(default_factory=list)
    planned_repacks: list[str] = field(default_factory=list)
    open_packs_sealed: int = 0  # open packs with dead bytes that the writers sealed on request
    open_packs_waiting: int = 0  # ... that stayed open (no writer answered in time)
    hot_pressure: str = ""  # why hot packs were repacked harder ('' when the hot disk has room)
    cluster: dict = field(default_factory=dict)  # a shared repository's gc: its log entries, who it waited for

    def to_json(self) -> dict:
        return asdict(self)

    def add_mark(self, live: set[bytes], dead_manifests: list[int], condemn: list) -> None:
        """What the mark found: live chunks, manifests nothing references, chunks to condemn."""
        self.manifests_dropped = len(dead_manifests)
        self.chunks_live = len(live)
        self.chunks_condemned = len(condemn)
        self.bytes_freeable = sum(loc.stored_len for _, loc in condemn)

    def add_plan(self, t, plan: retention.Plan) -> None:
        """What retention decided (the versions dropped and kept, every checkpoint)."""
        self.versions_dropped = len(plan.drop)
        self.versions_kept = sum(1 for _ in t.inohist_all()) - len(plan.drop)
        self.dropped = [
            {"path": d.path, "commit": d.commit, "size": d.size, "ino": d.ino} for d in plan.drop
        ]
        self.checkpoints = [
            {"path": c.path, "step": c.step, "kept": c.kept, "current": c.current,
             "reasons": c.reasons, "metric": c.metric}
            for c in plan.checkpoints
        ]  # fmt: skip


@contextlib.contextmanager
def _gc_lock(repo) -> Iterator[None]:
    fd = os.open(repo.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(f"{repo.path}: another `chunkfs gc` is running; wait for it") from None
        yield
    finally:
        os.close(fd)


def open_repository(path, *, dry_run: bool = False) -> Repository:
    """The repository for a gc: read-only, beside a mount if one runs. A shared repository's gc
    needs the node's log applied as it goes: without a mount it opens it as its maintainer."""
    repo = Repository(path, writable=False)
    if repo.cluster is None or dry_run or lock_holder(path) is not None:
        return repo
    repo.close()
    try:
        return Repository(path, writable=True)
    except Conflict:  # a mount started meanwhile
        return Repository(path, writable=False)


def run(
    repo,
    rules: list[retention.Rule] | None,
    *,
    dry_run: bool = False,
    grace_s: int | None = None,
    repack_below: float | None = None,
    progress: Callable[[int], None] = lambda n: None,
    now_ns: int | None = None,
) -> GcResult:
    """One gc pass over ``repo`` (open read-only or writable); see the module docstring."""
    settings = repo.settings.gc
    grace = settings.grace if grace_s is None else grace_s
    threshold = settings.repack_below if repack_below is None else repack_below
    now = clock.now_ns() if now_ns is None else now_ns
    result = GcResult(dry_run=dry_run, rules=None if rules is None else [r.describe() for r in rules])
    if repo.cluster is not None:
        with _gc_lock(repo):
            shared_gc.run(repo, rules, now, grace, dry_run, result)
        return result
    with _gc_lock(repo):
        if not dry_run:
            repo.tiers.resume()  # finish or undo what a killed gc (or tier move) left
        _condemn(repo, rules, now, dry_run, result)
        if not dry_run:
            _hook("condemned")
        _sweep_condemned(repo, now, grace, dry_run, result)
        if not dry_run:
            _hook("swept")
        _packs(repo, threshold, dry_run, progress, result)
    return result


# -- 1. retention and condemnation (one transaction) ------------------------------------


def _condemn(repo, rules, now: int, dry_run: bool, result: GcResult) -> None:
    # Retention reads sidecars (chunks, maybe from warm/cold): in a snapshot, not under the write lock.
    with repo.index.read() as t:
        plan = retention.evaluate(repo, rules, now, t)
    ctx = repo.index.read() if dry_run else repo.index.write()
    with ctx as t:
        if not dry_run:  # a tag made since the plan's snapshot keeps what it finds, whatever its path
            tags = [commit for name, commit, _created, _path in t.tags() if name not in plan.tags]
            plan.drop = [d for d in plan.drop if prune.still_droppable(t, d.ino, d.commit, tags)]
        result.add_plan(t, plan)
        dropped = {(d.ino, d.commit) for d in plan.drop}
        if not dry_run:
            prune.drop_versions(t, dropped)
        live, dead_manifests = prune.mark(t, dropped)
        condemn = [(c, loc) for c, loc in t.chunks() if c not in live]
        result.add_mark(live, dead_manifests, condemn)
        revive = [c for c, _e, _n, _l in t.condemned() if c in live]
        result.chunks_resurrected = len(revive)
        if dry_run:
            return
        for mid in dead_manifests:
            t.manifest_delete(mid)
        t.resurrect(revive)
        if condemn:
            epoch = t.gc_epoch_bump()
            for chunk, loc in condemn:
                t.condemn(chunk, loc, epoch, now)


# -- 2. sweeping condemned chunks ---------------------------------------------------------


def _sweep_condemned(repo, now: int, grace: int, dry_run: bool, result: GcResult) -> None:
    with repo.index.read() as t:
        leases = list(t.leases())
    live_floors = []
    dead = []
    for lease, pid, floor, beat, host in leases:
        alive = lease_alive(pid, host)
        result.leases.append({"pid": pid, "host": host, "floor": floor, "heartbeat_ns": beat, "alive": alive})
        if not alive:
            dead.append(lease)
        elif floor != NO_WINDOW:  # NO_WINDOW: that process has no file being written
            live_floors.append(floor)
    floor = min(live_floors, default=None)
    ctx = repo.index.read() if dry_run else repo.index.write()
    with ctx as t:
        if not dry_run:
            for lease in dead:
                t.lease_delete(lease)
        swept = waiting = 0
        for chunk, epoch, ns, _loc in list(t.condemned()):
            # a window that opened at epoch e (the condemnations up to e already committed) never
            # found a chunk condemned at or before e: only later condemnations need its commit
            if (floor is None or epoch <= floor) and now - ns >= grace * 1_000_000_000:
                swept += 1
                if not dry_run:
                    t.condemned_delete(chunk)
            else:
                waiting += 1
        result.chunks_swept, result.chunks_waiting = swept, waiting


# -- 3. packs ---------------------------------------------------------------------------------


def _hot_threshold(repo, threshold: float, result: GcResult) -> float:
    """The repack threshold of hot packs: ``threshold``, or ``PRESSURE_REPACK`` (nearly every dead byte
    back) while the hot disk has less than ``lifecycle.hot_min_free`` percent free."""
    minimum = repo.settings.lifecycle.hot_min_free
    free, total = repo.hot.free_bytes()
    if minimum and total and free * 100 < total * minimum:
        result.hot_pressure = f"hot disk {100 * free / total:.0f}% free, below {minimum}%"
        return max(threshold, PRESSURE_REPACK)
    return threshold


def _seal_open_packs(repo, usage: dict, threshold: float, result: GcResult) -> bool:
    """Have the writers seal their open packs when one holds dead bytes worth a repack (gc never
    touches an open pack); return whether any was sealed. A writer's background thread answers
    within a second (``PackStore.answer_seal_request``); open packs of a dead process are sealed
    by the next writable open of the repository (a mount)."""
    wanted = {p for p, u in usage.items() if u.info.state == PackState.OPEN and u.dead_bytes and u.fraction < threshold}
    if not wanted:
        return False
    if repo.writable:  # the writer is this process (the library), or dead
        repo.packs.seal_all()
        repo.packs.recover()
    else:
        with repo.index.write() as t:
            t.seal_request_put(clock.now_ns())
    deadline = time.monotonic() + SEAL_WAIT
    while True:
        with repo.index.read() as t:
            sealed = {p for p in wanted if (i := t.pack_get(p)) is None or i.state == PackState.SEALED}
        if sealed == wanted or repo.writable or time.monotonic() > deadline or not _writer_alive(result):
            break
        time.sleep(0.2)
    result.open_packs_sealed = len(sealed)
    result.open_packs_waiting = len(wanted - sealed)
    return bool(sealed)


def _writer_alive(result: GcResult) -> bool:
    """Whether a process that writes chunks (a mount, an import) is alive: it may answer."""
    return any(lease["alive"] for lease in result.leases)


def _packs(repo, threshold: float, dry_run: bool, progress, result: GcResult) -> None:
    usage = sweep.usage(repo.index)
    hot_threshold = _hot_threshold(repo, threshold, result)
    if not dry_run and _seal_open_packs(repo, usage, hot_threshold, result):
        usage = sweep.usage(repo.index)
    deletes, repacks = [], defaultdict(list)
    for pack, u in usage.items():
        if u.info.state != PackState.SEALED:
            continue
        if u.live_chunks == 0 and u.condemned == 0:
            deletes.append(pack)
            result.planned_deletes.append(f"{pack.hex()} ({tier_name(u.info.tier)}, {u.info.size} bytes)")
        elif u.dead_bytes and u.fraction < (hot_threshold if u.info.tier == Tier.HOT else threshold):
            repacks[(u.info.tier, u.info.group)].append(pack)
            result.planned_repacks.append(
                f"{pack.hex()} ({tier_name(u.info.tier)}, {u.fraction:.0%} live of {u.info.size} bytes)"
            )
    out = sweep.SweepResult()
    if not dry_run:
        if deletes:
            sweep.delete_packs(repo.tiers, repo.index, deletes, _hook, out)
        for (tier, group), packs in sorted(repacks.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            packs.sort(key=lambda p: usage[p].info.created_ns)
            sweep.repack(repo.tiers, repo.index, tier, group, packs, write_back=repo.packs.write_back,
                         progress=progress, hook=_hook, result=out)  # fmt: skip
        found = sweep.reclaim_orphans(repo.tiers, repo.index, repo.replicas, repo.settings.gc.orphan_age, out)
        log.info("gc: reclaimed %d orphaned objects: %s", len(found), ", ".join(found[:10]))
    result.packs_deleted = out.packs_deleted
    result.packs_repacked = out.packs_repacked
    result.packs_written = out.packs_written
    result.orphans = out.orphans_deleted
    result.orphans_foreign = out.foreign
    result.by_tier = out.by_tier
    result.bytes_freed = out.bytes_deleted + out.bytes_repacked_in - out.bytes_repacked_out + out.orphan_bytes
