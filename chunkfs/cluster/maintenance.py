"""gc in a shared repository: condemned and swept on every node, through the log.

One node's ``chunkfs gc`` (ops/gc.py, under the cluster's maintenance lease) cannot see
the other nodes' unpublished changes, their open write windows or their tags, and its
index does not know every chunk in another node's packs. So it decides nothing alone;
it writes two kinds of log entries that every node applies to its own index, in log
order, like any change (docs/multinode.md, "gc across nodes"):

1. a **gc** entry: the file versions its retention rules drop (by path, size and
   BLAKE3: inode and commit numbers are each node's own) and the chunks nothing
   references in its view. Each node drops those versions where they are neither
   current nor tagged here, marks what it still references, condemns the other listed
   chunks under a new local gc epoch (dedup stops finding them: docs/gc.md), and
   journals a ``keep`` of the listed chunks it still references — published like any
   change, it resurrects them on every node. The node notes the round (``meta/cluster_gc``);
2. its heartbeat says the round is **ready** once every change it journaled up to then
   (the keep included) is published and every write window open then has closed (its
   local writer leases' floors have passed the round's epoch) — from then on nothing on
   that node can reference a chunk condemned in it without the log saying so first;
3. once every member is ready and the gc node has applied the log as far as each of them
   had published, a chunk still condemned there, and not in its ``chunks`` (no file names
   it), is referenced nowhere: a **sweep** entry lists them. Each node forgets them, deletes its *own* packs that nothing in its index
   locates any more (on every tier) and forgets other nodes' (their warm objects are
   their owners' to delete: only the owner knows every chunk in them).

A node that re-encodes its packs on the way to warm (store/maintenance/rewrite.py) journals
a **relocate** change: the chunks it moved, published with their new locations, and the
packs it retired with the chunks each held. Every node applying it points those chunks
(live or condemned) at the new places where it located them in a retired pack, and forgets
a retired pack nothing here locates any more. The owner keeps each retired pack's warm
object (``meta/retiring``) until every member's heartbeat says it has applied the log past
that change, then deletes it (``delete_retired``); a read that looked the old place up just
before still finds it, or follows the chunk to its new one (store/pack/store.py).
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Callable

from chunkfs import clock
from chunkfs.index import Txn
from chunkfs.namespace import prune
from chunkfs.namespace.paths import Paths
from chunkfs.store.maintenance import sweep
from chunkfs.store.maintenance.rewrite import delete_old, located_at
from chunkfs.store.pack.store import lease_alive
from chunkfs.store.tiering.lock import OLD
from chunkfs.store.tiering.tiers import Tiers
from chunkfs.types import ChunkLocation, PackState, Tier

log = logging.getLogger(__name__)


def version_key(path: str, size: int, blake3: bytes) -> list:
    """How a gc entry names a file version on every node: by what it holds (inode and commit
    numbers, and the times of replayed creations, are each node's own). Versions of one path with
    the same content are dropped together where no rule of this node (current, tagged) keeps them."""
    return [path, int(size), bytes(blake3).hex()]


def apply_gc(t: Txn, body: dict, position: int) -> None:
    """Apply gc entry ``position`` inside this node's transaction ``t`` (steps 1 and 2 above)."""
    wanted = {tuple(v) for v in body.get("drops", [])}
    tags = [commit for _name, commit, _created, _path in t.tags()]
    drops: set[tuple[int, int]] = set()
    if wanted:
        paths = Paths(t)
        for v in t.inohist_all():
            if (stat.S_ISREG(v.record.mode)
                    and tuple(version_key(paths.path(v.ino), v.record.size, v.blake3)) in wanted
                    and prune.still_droppable(t, v.ino, v.commit, tags)):  # fmt: skip
                drops.add((v.ino, v.commit))
    prune.drop_versions(t, drops)
    live, dead_manifests = prune.mark(t)
    for mid in dead_manifests:
        t.manifest_delete(mid)
    now = clock.now_ns()
    epoch = t.gc_epoch_bump()
    keep = []
    for chunk in (bytes.fromhex(c) for c in body.get("condemn", [])):
        if chunk in live:
            keep.append(chunk.hex())
        elif (loc := t.chunk_get(chunk)) is not None:
            t.condemn(chunk, loc, epoch, now)
    if keep:  # referenced here (a tag, an unpublished change, other rules): resurrected everywhere
        t.outbox_put(now, {"op": "keep", "chunks": keep})
    t.cluster_gc_put({"round": position, "epoch": epoch, "time_ns": now})
    log.info("gc entry %d: %d versions dropped here, %d chunks kept", position, len(drops), len(keep))


def gc_state(t: Txn) -> dict | None:
    """The newest gc round applied here and whether it is ready (step 2), for the heartbeat."""
    doc = t.cluster_gc_get()
    if doc is None:
        return None
    oldest = t.outbox(1)
    published = not oldest or oldest[0][1] > doc["time_ns"]
    windows_closed = all(lease.floor >= doc["epoch"] for lease in t.leases() if lease_alive(lease.pid, lease.host))
    return {"round": doc["round"], "ready": published and windows_closed}


def apply_sweep(t: Txn, body: dict) -> None:
    """Forget the chunks of sweep entry ``body`` inside transaction ``t`` (step 3)."""
    for chunk in (bytes.fromhex(c) for c in body.get("chunks", [])):
        t.condemned_delete(chunk)  # a copy in ``chunks`` is a new one, stored since: it stays
    t.repack_due_put(clock.now_ns())  # this node's mover then repacks what the sweep left sparse


def delete_empty_packs(tiers: Tiers) -> int:
    """After a sweep: delete this node's sealed packs that nothing in its index locates any
    more (their warm objects once every member has applied the log this far: ``delete_retired``),
    and forget other nodes' (sparing their warm object); returns how many."""
    index = tiers.index
    empty = [p for p, u in sweep.usage(index).items()
             if u.info.state == PackState.SEALED and u.live_chunks == 0 and u.condemned == 0]  # fmt: skip
    if not empty:
        return 0
    with index.read() as t:
        foreign = {p for p in empty if t.foreign(p)}
    own = [p for p in empty if p not in foreign]
    result = sweep.SweepResult()
    sweep.delete_packs(tiers, index, own, lambda step: None, result, retire_warm=True)
    sweep.delete_packs(tiers, index, sorted(foreign), lambda step: None, result, spare=Tier.WARM)
    with index.write() as t:
        for pack in foreign:
            t.foreign_delete(pack)
    return len(empty)


def apply_relocate(t: Txn, op: dict, located: dict[bytes, ChunkLocation]) -> None:
    """Apply another node's ``relocate`` change inside ``t``: its moved chunks (``located``: the
    entry's locations) wherever this node placed them in a retired pack, each with its ``deltas``
    entry as the change gives it, then forget each retired pack that nothing here locates any more
    (its object is its node's to delete).

    A live chunk that became a delta brings its base back if a gc condemned it here: the node that
    re-encoded it switched it in only on a live base, and keeps that base on every node through its
    own ``keep`` (``apply_gc``), but this node may apply the change first — and must neither fail
    to read the delta meanwhile nor let a sweep computed here list the base."""
    retire = {bytes.fromhex(p): [bytes.fromhex(c) for c in chunks] for p, chunks in op["retire"].items()}
    bases = {bytes.fromhex(c): bytes.fromhex(b) for c, b in op.get("bases", {}).items()}
    for chunk in (bytes.fromhex(c) for c in op["chunks"]):
        new = located.get(chunk)
        if new is None:
            continue
        current = t.chunk_get(chunk)
        condemned = t.condemned_location(chunk)
        live = current is not None and bytes(current.pack) in retire
        if not (live or (condemned is not None and bytes(condemned.pack) in retire)):
            continue  # stored elsewhere here (a copy of this node's own): as it is
        if chunk in bases:
            t.delta_put(chunk, bases[chunk])
        else:
            t.delta_delete(chunk)
        if live:
            t.chunk_put(chunk, new)
            t.resurrect([chunk])  # its bases, if condemned here
        else:
            t.condemned_move(chunk, new)
    for pack, chunks in retire.items():
        if t.foreign(pack) and not any(located_at(t, c, pack) for c in chunks):
            t.pack_delete(pack)
            t.foreign_delete(pack)


def delete_retired(tiers: Tiers, members: Callable[[], dict[str, dict]]) -> int:
    """Delete the warm objects of this node's retired packs that every member (``members()``:
    their heartbeats, read only when a pack waits) has relocated away from; returns how many.
    A retired pack's position is the log entry this node had applied when it first saw its
    relocate change published: that entry carried it or came after it."""
    index = tiers.index
    with index.read() as t:
        retiring = t.retiring()
        if not retiring:
            return 0
        oldest = t.outbox(1)
        applied = t.applied_get()
        forgotten = t.forgotten()
    unpublished_since = oldest[0][1] if oldest else None
    noted = {p: (ns, pos) for p, (ns, pos) in retiring.items()
             if pos == 0 and (unpublished_since is None or ns < unpublished_since)}  # fmt: skip
    if noted:
        with index.write() as t:
            for pack, (ns, _) in noted.items():
                t.retiring_put(pack, ns, applied)
        retiring.update({p: (ns, applied) for p, (ns, _) in noted.items()})
    if not any(pos for _, pos in retiring.values()):  # none published yet: no need to read heartbeats
        return 0
    floor = min((int(m.get("applied", 0)) for n, m in members().items() if n not in forgotten), default=0)
    done = [p for p, (_, pos) in retiring.items() if 0 < pos <= floor]
    if not done:
        return 0
    with tiers.lock.hold(blocking=False) as got:
        if not got:  # a tier move's batch: the next heartbeat tries again
            return 0
        now = clock.now_ns()
        with index.write() as t:
            for pack in done:
                t.retiring_delete(pack)
                t.move_put(pack, Tier.WARM, OLD, now)
        delete_old(index, tiers.backend, [(p, Tier.WARM) for p in done])
    log.info("deleted %d re-encoded packs from warm: every node has relocated their chunks", len(done))
    return len(done)
