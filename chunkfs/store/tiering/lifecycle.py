"""Lifecycle policies: which runs' packs move to which tier now, and doing it.

Runs are pack groups (``PackInfo.group``: the run directory). The rules
(``[lifecycle]`` in chunkfs.toml, docs/tiers.md):

- **hot → warm** (or straight to cold when there is no warm tier) once a run is
  *complete*: marked by ``chunkfs run complete``, or no new data reached its
  packs for ``run_idle`` seconds. Only sealed packs move; a run a user moved
  to hot by hand (``tier move --to hot``) stays until marked complete again.
  On the way its packs are re-encoded (``warm_level``; maintenance/reencode.py;
  in a shared repository the other nodes relocate their chunks from the log), and
  so are the packs hot pressure evicted to warm as they were (``unencoded``).
- **warm → cold** for warm packs older than ``cold_after_days`` of a run not
  read for ``cold_idle_days``: repacked, recompressed, one run per pack.
- **hot pressure**: when the hot disk has less than ``hot_min_free`` percent
  free, sealed hot packs that already have a verified warm copy leave hot
  early (complete runs first, then the oldest packs), until it has that much
  again: each costs a HEAD and a delete, and a checkpoint being written never
  waits for S3 to make room (docs/tiers.md, "Hot-tier pressure").

``plan`` only reads the index; ``apply`` performs the actions through
``Tiers`` (each pack move or repack is crash-safe on its own).
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from chunkfs import clock
from chunkfs.background import BackgroundThread
from chunkfs.config import LifecycleSettings
from chunkfs.errors import ChunkfsError, CorruptData, NotFound
from chunkfs.index import Index
from chunkfs.index.txn import RunRecord
from chunkfs.store.maintenance import reencode
from chunkfs.store.tiering.tiers import Tiers
from chunkfs.types import PackId, PackInfo, PackState, Tier, tier_name

NS = 10**9
DAY_NS = 86400 * NS
IDLE_WAIT = 3600.0
"""Seconds the tier mover sleeps between looks when nobody asks it for a round."""

log = logging.getLogger(__name__)


@dataclass
class Action:
    """Move ``packs`` of ``run`` from ``src`` to ``dst``: re-encoded into new packs at zstd
    ``level`` (``repack_level``), or as they are (0)."""

    run: str
    src: Tier
    dst: Tier
    packs: list[PackId]
    bytes: int
    reason: str
    level: int = 0

    def describe(self) -> str:
        """The move in words: ``hot→warm, re-encoded (zstd 3)``."""
        move = f"{tier_name(self.src)}→{tier_name(self.dst)}"
        return f"{move}, re-encoded (zstd {self.level})" if self.level else move

    def as_dict(self) -> dict:
        return {
            "run": self.run, "from": tier_name(self.src), "to": tier_name(self.dst),
            "packs": len(self.packs), "bytes": self.bytes, "reason": self.reason, "reencode_level": self.level,
        }  # fmt: skip


@dataclass
class Outcome:
    """What ``apply`` did: per "from→to", packs and bytes moved; packs written by re-encoding
    repacks, per destination tier; failures."""

    moved: dict[str, dict[str, int]] = field(default_factory=dict)
    written: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, src: Tier, dst: Tier, packs: int, nbytes: int) -> None:
        _tally(self.moved, f"{tier_name(src)}→{tier_name(dst)}", packs=packs, bytes=nbytes)

    def add_written(self, dst: Tier, packs: int, nbytes: int, deltas: int) -> None:
        """New packs a re-encoding wrote on ``dst``, and how many chunks it stored as deltas."""
        _tally(self.written, tier_name(dst), packs=packs, bytes=nbytes, deltas=deltas)

    def merge(self, other: Outcome) -> Outcome:
        """This outcome with ``other``'s added (two ``apply`` calls of one round)."""
        for table, theirs in ((self.moved, other.moved), (self.written, other.written)):
            for key, row in theirs.items():
                _tally(table, key, **row)
        self.errors += other.errors
        return self

    def summary(self) -> str:
        """One line for a log: what moved, and what re-encoding wrote ("" if nothing moved)."""
        moved = [f"{key} {row['packs']} packs, {row['bytes'] / 1e6:.1f} MB" for key, row in sorted(self.moved.items())]
        written = [f"re-encoded into {row['packs']} {tier} packs, {row['bytes'] / 1e6:.1f} MB"
                   + (f" ({row['deltas']} chunks as deltas)" if row["deltas"] else "")
                   for tier, row in sorted(self.written.items())]  # fmt: skip
        return "; ".join(moved + written)


def _tally(table: dict[str, dict[str, int]], key: str, **counts: int) -> None:
    row = table.setdefault(key, dict.fromkeys(counts, 0))
    for name, n in counts.items():
        row[name] += n


def repack_level(settings: LifecycleSettings, src: Tier, dst: Tier) -> int:
    """The zstd level a move from ``src`` to ``dst`` re-encodes at (0: the packs move as they are).

    To cold always (``cold_level``); from hot to warm at ``warm_level`` (in a shared
    repository too: other nodes learn the new locations from the log, rewrite.py). Nothing
    else is rewritten: evictions under hot pressure must cost a HEAD, not CPU, and packs
    coming back warmer keep the encoding they had."""
    if dst == Tier.COLD:
        return settings.cold_level
    if src == Tier.HOT and dst == Tier.WARM:
        return settings.warm_level
    return 0


def runs_of(index: Index) -> tuple[dict[str, list[tuple[PackId, PackInfo]]], dict[str, RunRecord]]:
    """Every run's packs, and every run's lifecycle record."""
    groups: dict[str, list[tuple[PackId, PackInfo]]] = defaultdict(list)
    with index.read() as t:
        for pack, info in t.packs():
            groups[info.group].append((pack, info))
        records = dict(t.runs())
    return groups, records


def is_complete(rec: RunRecord, packs: list[tuple[PackId, PackInfo]], settings: LifecycleSettings, now: int) -> str | None:
    """Why the run counts as complete, or None."""
    if rec.completed_ns:
        return "marked complete"
    if settings.run_idle and packs:
        last_write = max(info.created_ns for _, info in packs)
        if now - last_write >= settings.run_idle * NS:
            return f"no new data for {_span(now - last_write)}"
    return None


def complete_runs(index: Index, settings: LifecycleSettings, now: int | None = None) -> set[str]:
    """Runs that are complete now (the mount seals their open packs)."""
    now = clock.now_ns() if now is None else now
    groups, records = runs_of(index)
    return {g for g, packs in groups.items() if is_complete(records.get(g, RunRecord()), packs, settings, now)}


def hot_shortfall(tiers: Tiers, settings: LifecycleSettings) -> tuple[int, str]:
    """(bytes to free on the hot disk to get back to ``hot_min_free`` percent — 0 when it has
    enough or no warm tier could take the packs —, how full it is in words)."""
    if not settings.hot_min_free or not tiers.configured(Tier.WARM):
        return 0, ""
    disk = shutil.disk_usage(tiers.backend(Tier.HOT).root)
    wanted = disk.total * settings.hot_min_free // 100
    words = f"hot disk {100 * disk.free / disk.total:.0f}% free, below {settings.hot_min_free}%"
    return max(0, wanted - disk.free), words


def _pressure(
    index: Index, groups: dict[str, list[tuple[PackId, PackInfo]]], records: dict[str, RunRecord],
    planned: set[PackId], shortfall: int, why: str,
) -> list[Action]:  # fmt: skip
    """Hot packs with a warm copy to evict for ``shortfall`` bytes: complete runs' (those already
    ``planned``) count first, then the oldest others; runs held on hot by hand are left alone."""
    shortfall -= sum(i.size for packs in groups.values() for p, i in packs if p in planned)
    if shortfall <= 0:
        return []
    with index.read() as t:
        candidates = sorted(
            (i.created_ns, p, i) for g, packs in groups.items() if records.get(g, RunRecord()).held != Tier.HOT
            for p, i in packs
            if i.tier == Tier.HOT and i.state == PackState.SEALED and p not in planned
            and any(tier == Tier.WARM for tier, _, _ in t.copies_of(p))
        )  # fmt: skip
    chosen: dict[str, list[tuple[PackId, PackInfo]]] = defaultdict(list)
    for _, pack, info in candidates:
        if shortfall <= 0:
            break
        chosen[info.group].append((pack, info))
        shortfall -= info.size
    return [
        Action(g, Tier.HOT, Tier.WARM, [p for p, _ in packs], sum(i.size for _, i in packs), why)
        for g, packs in sorted(chosen.items())
    ]


def _with_deltas(index: Index, moving: set[PackId], warm: dict[PackId, PackInfo]) -> list[PackId]:
    """``moving`` and the ``warm`` packs holding deltas whose bases are in them, transitively: a
    base goes cold only with every delta that needs it (a cold read of an archive class waits
    for a thaw; docs/tiers.md, "Delta chunks")."""
    moving = set(moving)
    with index.read() as t:
        deltas = [(t.chunk_get(c), t.chunk_get(b)) for c, b in t.deltas()]
    grew = True
    while grew:
        grew = False
        for delta, base in deltas:
            if delta is not None and base is not None and base.pack in moving and delta.pack in warm:
                grew = grew or delta.pack not in moving
                moving.add(delta.pack)
    return sorted(moving)


def reencode_evicted(
    run: str, packs: list[tuple[PackId, PackInfo]], marked: set[PackId], settings: LifecycleSettings, why: str
) -> Action | None:
    """The re-encoding, on warm, of the packs of ``run`` that hot pressure evicted there as they
    were (``marked``: ``Txn.unencoded()``); None if it has none or warm packs are not re-encoded."""
    level = repack_level(settings, Tier.HOT, Tier.WARM)
    raw = [(p, i) for p, i in packs if p in marked and i.tier == Tier.WARM and i.state == PackState.SEALED]
    if not level or not raw:
        return None
    return Action(run, Tier.WARM, Tier.WARM, [p for p, _ in raw], sum(i.size for _, i in raw), why, level)


def plan(index: Index, tiers: Tiers, settings: LifecycleSettings, now: int | None = None) -> list[Action]:
    """The moves the policies call for now, run by run (hot-pressure evictions last)."""
    now = clock.now_ns() if now is None else now
    groups, records = runs_of(index)
    with index.read() as t:
        marked = t.unencoded()
    actions = []
    for group in sorted(groups):
        packs = groups[group]
        rec = records.get(group, RunRecord())
        sealed = [(p, i) for p, i in packs if i.state == PackState.SEALED]
        hot = [(p, i) for p, i in sealed if i.tier == Tier.HOT]
        nxt = tiers.next_tier(Tier.HOT)
        why = is_complete(rec, packs, settings, now)
        if hot and nxt is not None and why and rec.held != Tier.HOT:
            level = repack_level(settings, Tier.HOT, nxt)
            actions.append(Action(group, Tier.HOT, nxt, [p for p, _ in hot], sum(i.size for _, i in hot), why, level))
        if why and rec.held != Tier.HOT and (raw := reencode_evicted(group, packs, marked, settings, why)):
            actions.append(raw)
        if tiers.configured(Tier.COLD) and tiers.configured(Tier.WARM) and settings.cold_after_days:
            age = settings.cold_after_days * DAY_NS
            warm = {p: i for p, i in sealed if i.tier == Tier.WARM}
            old = [(p, i) for p, i in warm.items() if now - i.created_ns >= age]
            last_read = max([rec.last_read_ns] + [i.created_ns for _, i in packs])
            idle = now - last_read
            if old and idle >= settings.cold_idle_days * DAY_NS:
                old = [(p, warm[p]) for p in _with_deltas(index, {p for p, _ in old}, warm)]
                reason = f"older than {settings.cold_after_days} days, not read for {_span(idle)}"
                packs_old, size = [p for p, _ in old], sum(i.size for _, i in old)
                actions.append(Action(group, Tier.WARM, Tier.COLD, packs_old, size, reason, settings.cold_level))
    shortfall, why = hot_shortfall(tiers, settings)
    if shortfall:
        planned = {p for a in actions if a.src == Tier.HOT for p in a.packs}
        actions += _pressure(index, groups, records, planned, shortfall, why)
    return actions


def apply(
    tiers: Tiers, actions: list[Action], progress: Callable[[int], None] = lambda n: None,
    stop: Callable[[], bool] = lambda: False,
) -> Outcome:  # fmt: skip
    """Perform ``actions``; a damaged pack is reported and skipped, an unreachable tier stops
    everything; once ``stop()`` says so (asked before each pack), what is done stays done and
    the rest waits for the next round. Plain moves go first: an eviction under hot pressure
    must not wait behind a run's re-encoding."""
    outcome = Outcome()
    for a in sorted(actions, key=lambda a: a.level > 0):
        if stop():
            break
        try:
            if a.level:
                r = reencode.repack(tiers, a.run, a.packs, a.dst, a.level, progress, stop)
                outcome.add(a.src, a.dst, r.packs_in, r.bytes_in)
                outcome.add_written(a.dst, r.packs_out, r.bytes_out, r.deltas)
                continue
            for pack in a.packs:
                if stop():
                    break
                with tiers.index.read() as t:
                    info = t.pack_get(pack)
                if info is None or info.tier == a.dst:
                    continue
                tiers.move_pack(pack, a.dst)
                outcome.add(info.tier, a.dst, 1, info.size)
                progress(info.size)
        except (CorruptData, NotFound) as e:
            outcome.errors.append(f"{a.run}: {e}")
    return outcome


def _span(ns: int) -> str:
    s = ns / NS
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.1f}{unit}"
    return f"{s:.0f}s"


class Mover(BackgroundThread):
    """A mount's tier mover: applies the policies whenever the mount asks (``request``: every
    ``interval``, or at once when the hot disk runs short), in a thread of its own at the lowest
    CPU priority — re-encoding a run's packs costs CPU that a writer must never wait for — and
    stops between two batches when the mount stops."""

    thread_name = "chunkfs-tier-mover"
    low_priority = True

    def __init__(self, run: Callable[[Callable[[], bool]], Outcome]) -> None:
        """``run(stop)``: one round of the policies (``Repository.run_policies``)."""
        super().__init__()
        self._round = run
        self._requested = threading.Event()

    def request(self) -> None:
        """Run a round now (or right after the one running)."""
        self._requested.set()
        self.wake()

    def _loop(self) -> None:
        while self.pause(IDLE_WAIT):
            if not self._requested.is_set():
                continue
            self._requested.clear()
            try:
                self._round(lambda: self.stopping)
            except ChunkfsError as e:
                log.warning("background tier work: %s", e)
            except Exception:  # a bug: keep running and say so
                log.exception("background tier work: unexpected error")
