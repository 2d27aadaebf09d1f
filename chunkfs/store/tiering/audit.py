"""Checking pack placement: does every tier hold what the index says, and nothing else?

Read-only; ``chunkfs tier --check`` and the tests run it (``Tiers.audit``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chunkfs.errors import CorruptData
from chunkfs.store.pack.files import pack_id_from_name, pack_name
from chunkfs.types import PackState, Tier, tier_name

if TYPE_CHECKING:
    from chunkfs.store.tiering.tiers import Tiers


def audit(tiers: Tiers, *, deep: bool = False) -> list[str]:
    """Problems with pack placement: an indexed pack or copy missing (or of the wrong size)
    where the index says it is, an object on a tier that nothing explains, an operation still
    in flight. ``deep`` also compares every remote copy's BLAKE3 metadata. In a repository shared
by several nodes, packs on warm that this node's index lacks are other nodes' (docs/multinode.md)."""
    problems = []
    with tiers.index.read() as t:
        packs = dict(t.packs())
        copies = {(p, tier): digest for p, tier, _, digest in t.copies()}
        notes = [(p, tier) for p, tier, _, _ in t.moves()]
        shared = t.cluster_get() is not None  # other nodes' packs on warm are not in this index yet
    for pack, tier in notes:
        problems.append(f"pack {pack.hex()}: a {tier_name(tier)} tier operation is unfinished (rerun `chunkfs tier`)")
    expected: dict[Tier, set[str]] = {tier: set() for tier in Tier}
    for pack, info in packs.items():
        expected[info.tier].add(pack_name(pack))
    for pack, tier in copies:
        expected[tier].add(pack_name(pack))
    for tier in Tier:
        if not tiers.configured(tier):
            for name in sorted(expected[tier]):
                problems.append(f"{name}: placed on the {tier_name(tier)} tier, which is not configured")
            continue
        b = tiers.backend(tier)
        present = {n for n in b.list("packs/") if pack_id_from_name(n) is not None}
        for name in sorted(expected[tier] - present):
            problems.append(f"{b.url}/{name}: missing")
        for name in sorted(present - expected[tier]):
            pack = pack_id_from_name(name)
            if (pack, tier) not in notes and not (shared and tier == Tier.WARM):
                problems.append(f"{b.url}/{name}: not in the index (orphan)")
        for name in sorted(expected[tier] & present):
            pack = pack_id_from_name(name)
            info = packs.get(pack)
            if info is not None and info.tier == tier and info.state == PackState.SEALED:
                actual = b.size(name)
                if actual != info.size:
                    problems.append(f"{b.url}/{name}: {actual} bytes, the index says {info.size}")
            if deep and (pack, tier) in copies and info is not None:
                try:
                    b.verify(name, copies[(pack, tier)], info.size)
                except CorruptData as e:
                    problems.append(str(e))
    return problems
