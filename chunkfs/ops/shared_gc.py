"""``chunkfs gc`` in a repository shared by several nodes (docs/multinode.md, "gc across nodes").

This node decides what its view of the repository no longer needs, and says it in the
shared log; every node then applies it to its own index (cluster/maintenance.py has the
protocol and the argument). Here, under the cluster's maintenance lease:

1. retention and the mark run on this node's view, in a snapshot: the versions to drop
   and the chunks nothing references here go into a **gc entry**;
2. the run waits (up to ``SWEEP_WAIT`` seconds) until every member's heartbeat says it
   applied that entry and is *ready*, and this node has applied the log as far as each of
   them had published — then every reference any node still has to a listed chunk has
   resurrected it here;
3. the chunks still condemned here (and older than ``gc.grace``) that no file here names
   go into a **sweep entry**; each node forgets them and deletes its own packs that nothing
   locates any more. (A chunk some file names is live on every node by its id, whatever copy
   each node reads: a writer that could not find it by dedup while it was condemned stored
   it again, so nodes may know different copies. Its condemned copy stays until the chunk
   itself dies.)

Repacks do not run here: each node repacks its own packs that a sweep left sparse, in its tier
mover, through relocate changes (cluster/mover.py, ``repack_sparse``). Orphan sweeps do
not run in a shared repository (other nodes' packs on warm are not orphans). A member that stays unready (down,
or a file open for writing since before the entry) only delays the sweep: the next gc
finishes it; a member gone for good is removed with ``chunkfs forget-node`` (ops/cluster.py).
"""

from __future__ import annotations

import logging
import time

from chunkfs import clock
from chunkfs.cluster import entries
from chunkfs.cluster.log import LEASE_TTL, Lease
from chunkfs.cluster.maintenance import version_key
from chunkfs.errors import BackendUnavailable
from chunkfs.namespace import prune
from chunkfs.ops import retention
from chunkfs.repo import lock_holder
from chunkfs.store.maintenance.metabackup import join_point

log = logging.getLogger(__name__)

SWEEP_WAIT = 60.0
"""Seconds a gc waits for every member to be ready for its sweep (the next gc finishes it)."""
POLL = 0.5


def run(repo, rules, now: int, grace: int, dry_run: bool, result) -> None:
    """One gc of a shared repository into ``result`` (a ``GcResult``); see the module docstring."""
    cluster = repo.cluster
    if repo.writable and not dry_run:
        cluster.sync()  # decide on what the log says now
    with repo.index.read() as t:
        plan = retention.evaluate(repo, rules, now, t)
        result.add_plan(t, plan)
        dropped = {(d.ino, d.commit) for d in plan.drop}
        drops = []
        for d in plan.drop:
            v = next(v for v in t.versions(d.ino) if v.commit == d.commit)
            drops.append(version_key(d.path, v.record.size, v.blake3))
        live, dead_manifests = prune.mark(t, dropped)
        condemn = [(c, loc) for c, loc in t.chunks() if c not in live]
    result.add_mark(live, dead_manifests, condemn)
    if dry_run:
        return
    with cluster.shared.lease(cluster.node, "gc") as lease:
        body = {"drops": drops, "condemn": [bytes(c).hex() for c, _ in condemn]}
        position = cluster.publish_maintenance(entries.GC, body)
        result.cluster["gc_entry"] = position
        _wait_applied(repo, position, lease)
        with repo.index.read() as t:
            epoch = t.cluster_gc_get()["epoch"]
            old = [c for c, e, ns, _loc in t.condemned()
                   if e <= epoch and clock.now_ns() - ns >= grace * 1_000_000_000 and t.chunk_get(c) is None]  # fmt: skip
            result.chunks_waiting = t.condemned_count() - len(old)
        if old:
            _sweep(repo, position, old, lease, result)
        _truncate(cluster, result)


def _sweep(repo, position: int, old: list[bytes], lease: Lease, result) -> None:
    """Steps 2 and 3: wait until every member is ready for gc entry ``position``, then sweep ``old``."""
    cluster = repo.cluster
    waiting = _wait_ready(repo, position, lease)
    if waiting:
        result.cluster["waiting_for"] = waiting
        result.chunks_waiting += len(old)
        return
    with repo.index.read() as t:  # resurrected meanwhile (a keep, a change): live here
        swept = [c for c in old if t.condemned_get(c) is not None and t.chunk_get(c) is None]
    result.chunks_waiting += len(old) - len(swept)
    result.chunks_swept = len(swept)
    if swept:
        position = cluster.publish_maintenance(entries.SWEEP, {"round": position, "chunks": [c.hex() for c in swept]})
        result.cluster["sweep_entry"] = position
        _wait_applied(repo, position, lease)


def _truncate(cluster, result) -> None:
    """Delete the log entries every member has applied and the metadata backup a joining node
    starts from holds: the log keeps only what someone may need. (Backups take the lease this
    gc holds, and pruning keeps that backup until one that holds more is uploaded.)"""
    with cluster.index.read() as t:
        gone = t.forgotten()
    members = {n: m for n, m in cluster.shared.members().items() if n not in gone}
    joins = join_point(cluster.shared.backend, cluster.index.repo_id)
    if not members or joins is None or any("applied" not in m for m in members.values()):
        return
    upto = min([m["applied"] for m in members.values()] + [joins.position])
    deleted = cluster.shared.truncate(upto)
    if deleted:
        result.cluster["log_truncated"] = {"entries": deleted, "first": upto + 1}


def _wait_applied(repo, position: int, lease: Lease) -> None:
    """Until this node has applied log entry ``position``: by this process when it is the
    node's maintainer, else by the mount's daemon (which must be running)."""
    renewed = time.monotonic()
    while True:
        if repo.writable:
            repo.cluster.sync()
        with repo.index.read() as t:
            if t.applied_get() >= position:
                return
        if not repo.writable and lock_holder(repo.path) is None:
            raise BackendUnavailable(
                f"{repo.path}: the mount that applies the shared log stopped; run `chunkfs gc` again"
            )
        renewed = _renew(lease, renewed)
        time.sleep(POLL)


def _wait_ready(repo, position: int, lease: Lease) -> list[str]:
    """Wait until every member is ready for gc entry ``position`` and this node has applied what
    they had published; returns the members still not ready after ``SWEEP_WAIT`` ([]: all are)."""
    cluster = repo.cluster
    deadline = time.monotonic() + SWEEP_WAIT
    renewed = time.monotonic()
    while True:
        if repo.writable:  # this process is the node's maintainer: publish its keeps, say it is ready
            if repo.uploader is not None:
                repo.uploader.drain()
            cluster.sync()
            cluster.heartbeat()
        with repo.index.read() as t:
            applied = t.applied_get()
            gone = t.forgotten()
        members = {n: m for n, m in cluster.shared.members().items() if n not in gone}
        waiting = []
        for node, m in sorted(members.items()):
            gc = m.get("gc") or {}
            if gc.get("round", 0) < position or not gc.get("ready"):
                waiting.append(f"node {node} ({m.get('host', '?')}): not ready for gc entry {position}")
            elif m.get("applied", 0) > applied:
                waiting.append(f"this node: has not applied entry {m['applied']} of node {node} yet")
        if not waiting:
            return []
        if time.monotonic() > deadline:
            log.warning("gc: not sweeping yet: %s", "; ".join(waiting))
            return waiting
        renewed = _renew(lease, renewed)
        time.sleep(POLL)


def _renew(lease: Lease, renewed: float) -> float:
    if time.monotonic() - renewed < LEASE_TTL / 3:
        return renewed
    lease.renew()
    return time.monotonic()
