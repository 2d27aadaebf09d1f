"""A shared repository's tier mover: the moves every other node must follow, one node at a time.

Each node moves only its own packs, but two kinds of moves change where the other nodes read
chunks, and go through relocate changes (maintenance.py, "relocate"): re-encodings on the way
to warm, and the repack of packs a gc sweep left sparse. They run on one node at a time across
the cluster, under the maintenance lease that gc and metadata backups take (docs/multinode.md,
"Moving chunks: relocate"), renewed between batches. Plain moves (the same object on warm:
nothing for others to learn) and evictions under hot pressure never wait for it.

``Repository.apply_tier_actions`` and ``repack_after_sweep`` call in here when the repository
is shared; a mount's round is ``background``: while another node holds the lease (or the store
is down) its moves wait for a later round instead of failing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from chunkfs.cluster.log import LEASE_TTL, TIER_MOVER
from chunkfs.cluster.node import Cluster
from chunkfs.errors import BackendUnavailable, Conflict
from chunkfs.store.maintenance import sweep
from chunkfs.store.tiering import lifecycle
from chunkfs.store.tiering.tiers import Tiers
from chunkfs.types import PackState, Tier

log = logging.getLogger(__name__)


def apply(
    cluster: Cluster, tiers: Tiers, actions: list[lifecycle.Action], progress: Callable[[int], None],
    stop: Callable[[], bool], *, background: bool,
) -> lifecycle.Outcome:  # fmt: skip
    """``lifecycle.apply`` of ``actions``: the plain moves first, then the re-encodings under the
    lease. ``Conflict`` names the node holding it (unless ``background``)."""
    outcome = lifecycle.apply(tiers, [a for a in actions if not a.level], progress, stop)
    reencode = [a for a in actions if a.level]
    if reencode:
        with _lease(cluster, background) as lost:
            if lost is not None:
                outcome.merge(lifecycle.apply(tiers, reencode, progress, lambda: stop() or lost()))
    return outcome


def repack_after_sweep(cluster: Cluster, tiers: Tiers, threshold: float, write_back: bool, *, background: bool) -> bool:
    """Once a sweep entry was applied here (``meta/cluster_repack``): repack this node's packs it
    left sparse (``repack_sparse``) under the lease; whether it ran."""
    with tiers.index.read() as t:
        due = t.repack_due()
    if not due:
        return False
    with _lease(cluster, background) as lost:
        if lost is None:
            return False
        started = time.monotonic()
        r = repack_sparse(tiers, threshold, write_back, lost)
        with tiers.index.write() as t:
            if t.repack_due() == due:  # no newer sweep meanwhile
                t.repack_due_clear()
    if r.packs_repacked:
        log.info("after a gc sweep: %d sparse packs (%.1f MB) repacked into %d (%.1f MB) in %.1f s",
                 r.packs_repacked, r.bytes_repacked_in / 1e6, r.packs_written, r.bytes_repacked_out / 1e6,
                 time.monotonic() - started)  # fmt: skip
    return True


def repack_sparse(tiers: Tiers, threshold: float, write_back: bool, lost: Callable[[], bool]) -> sweep.SweepResult:
    """Rewrite this node's sealed packs whose live part fell under ``threshold`` (``gc.repack_below``)
    into new packs, one run and tier at a time, through relocate changes (store/maintenance/rewrite.py):
    the other nodes follow the chunks, and the old warm objects wait for them. Stops between two
    runs once ``lost()`` says the lease was lost."""
    result = sweep.SweepResult()
    usage = sweep.usage(tiers.index)
    groups: dict[tuple[Tier, str], list] = {}
    with tiers.index.read() as t:
        for pack, u in usage.items():
            if (u.info.state == PackState.SEALED and u.dead_bytes and u.fraction < threshold
                    and (u.live_chunks or u.condemned) and not t.foreign(pack)):  # fmt: skip
                groups.setdefault((u.info.tier, u.info.group), []).append(pack)
    for (tier, group), packs in sorted(groups.items()):
        if lost():
            break
        packs.sort(key=lambda p: usage[p].info.created_ns)
        sweep.repack(tiers, tiers.index, tier, group, packs, write_back=write_back, progress=lambda n: None,
                     hook=lambda step: None, result=result, relocate=True)  # fmt: skip
    return result


@contextlib.contextmanager
def _lease(cluster: Cluster, background: bool) -> Iterator[Callable[[], bool] | None]:
    """Hold the maintenance lease for this node's mover; yields ``lost()``, to ask between two
    batches: it renews the lease every quarter of its life, and says True once another node
    took it over (it expired during a long batch). When it cannot be taken: ``Conflict`` naming
    the holder, or ``BackendUnavailable`` — for a ``background`` round, None instead."""
    with contextlib.ExitStack() as stack:
        try:
            lease = stack.enter_context(cluster.shared.lease(cluster.node, TIER_MOVER, wait=not background))
        except (Conflict, BackendUnavailable) as e:
            if not background:
                raise
            log.info("tier mover: waits for a later round: %s", e)
            yield None
            return
        renewed = time.monotonic()

        def lost() -> bool:
            nonlocal renewed
            if time.monotonic() - renewed < LEASE_TTL / 4:
                return False
            try:
                lease.renew()
            except Conflict as e:
                log.warning("tier mover: %s", e)
                return True
            renewed = time.monotonic()
            return False

        yield lost
