"""Lifecycle policies: which runs' packs move to which tier now, and doing it.

Runs are pack groups (``PackInfo.group``: the run directory). The rules
(``[lifecycle]`` in chunkfs.toml, docs/tiers.md):

- **hot → warm** (or straight to cold when there is no warm tier) once a run is
  *complete*: marked by ``chunkfs run complete``, or no new data reached its
  packs for ``run_idle`` seconds. Only sealed packs move; a run a user moved
  to hot by hand (``tier move --to hot``) stays until marked complete again.
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

import shutil
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from chunkfs import clock
from chunkfs.config import LifecycleSettings
from chunkfs.errors import CorruptData, NotFound
from chunkfs.index import Index
from chunkfs.index.txn import RunRecord
from chunkfs.store.maintenance import coldrepack
from chunkfs.store.tiering.tiers import Tiers
from chunkfs.types import PackId, PackInfo, PackState, Tier, tier_name

NS = 10**9
DAY_NS = 86400 * NS


@dataclass
class Action:
    """Move ``packs`` of ``run`` from ``src`` to ``dst`` (a repack when ``dst`` is cold)."""

    run: str
    src: Tier
    dst: Tier
    packs: list[PackId]
    bytes: int
    reason: str

    def as_dict(self) -> dict:
        return {
            "run": self.run, "from": tier_name(self.src), "to": tier_name(self.dst),
            "packs": len(self.packs), "bytes": self.bytes, "reason": self.reason,
        }  # fmt: skip


@dataclass
class Outcome:
    """What ``apply`` did: per "from→to", packs and bytes moved; cold packs written; failures."""

    moved: dict[str, dict[str, int]] = field(default_factory=dict)
    cold_packs_written: int = 0
    cold_bytes_written: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, src: Tier, dst: Tier, packs: int, nbytes: int) -> None:
        key = f"{tier_name(src)}→{tier_name(dst)}"
        row = self.moved.setdefault(key, {"packs": 0, "bytes": 0})
        row["packs"] += packs
        row["bytes"] += nbytes


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


def plan(index: Index, tiers: Tiers, settings: LifecycleSettings, now: int | None = None) -> list[Action]:
    """The moves the policies call for now, run by run (hot-pressure evictions last)."""
    now = clock.now_ns() if now is None else now
    groups, records = runs_of(index)
    actions = []
    for group in sorted(groups):
        packs = groups[group]
        rec = records.get(group, RunRecord())
        sealed = [(p, i) for p, i in packs if i.state == PackState.SEALED]
        hot = [(p, i) for p, i in sealed if i.tier == Tier.HOT]
        nxt = tiers.next_tier(Tier.HOT)
        why = is_complete(rec, packs, settings, now)
        if hot and nxt is not None and why and rec.held != Tier.HOT:
            actions.append(Action(group, Tier.HOT, nxt, [p for p, _ in hot], sum(i.size for _, i in hot), why))
        if tiers.configured(Tier.COLD) and tiers.configured(Tier.WARM) and settings.cold_after_days:
            age = settings.cold_after_days * DAY_NS
            old = [(p, i) for p, i in sealed if i.tier == Tier.WARM and now - i.created_ns >= age]
            last_read = max([rec.last_read_ns] + [i.created_ns for _, i in packs])
            idle = now - last_read
            if old and idle >= settings.cold_idle_days * DAY_NS:
                reason = f"older than {settings.cold_after_days} days, not read for {_span(idle)}"
                actions.append(Action(group, Tier.WARM, Tier.COLD, [p for p, _ in old], sum(i.size for _, i in old), reason))
    shortfall, why = hot_shortfall(tiers, settings)
    if shortfall:
        planned = {p for a in actions if a.src == Tier.HOT for p in a.packs}
        actions += _pressure(index, groups, records, planned, shortfall, why)
    return actions


def apply(tiers: Tiers, actions: list[Action], progress: Callable[[int], None] = lambda n: None) -> Outcome:
    """Perform ``actions``; a damaged pack is reported and skipped, an unreachable tier stops everything."""
    outcome = Outcome()
    for a in actions:
        try:
            if a.dst == Tier.COLD:
                r = coldrepack.repack(tiers, a.run, a.packs, Tier.COLD, progress)
                outcome.add(a.src, a.dst, r.packs_in, r.bytes_in)
                outcome.cold_packs_written += r.packs_out
                outcome.cold_bytes_written += r.bytes_out
                continue
            for pack in a.packs:
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
