"""The cold repack: one run's packs rewritten into new packs on the cold tier.

When the lifecycle policy sends a run to cold, its packs are not copied as they are:
their live chunks are recompressed (``Tiers.transform``: a stronger zstd level) into
new packs of that run only, through the one pack rewrite (rewrite.py): every chunk
location and pack home switches in one transaction, under the tier lock.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from chunkfs.store.backends.local import LocalBackend
from chunkfs.store.maintenance.rewrite import PackRewrite, live_entries
from chunkfs.store.pack.files import pack_name, read_entries
from chunkfs.store.tiering.tiers import Tiers
from chunkfs.types import ChunkId, PackId, PackState, Tier, tier_name


@dataclass
class RepackResult:
    packs_in: int = 0
    packs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    chunks: int = 0


def repack(tiers: Tiers, group: str, packs: list[PackId], dst: Tier, progress: Callable[[int], None] = lambda n: None) -> RepackResult:
    """Rewrite the live chunks of ``packs`` (one run's) into new packs on ``dst``, re-encoded by
    ``tiers.transform``."""
    result = RepackResult()
    with tiers.lock.hold():
        with tiers.index.read() as t:
            infos = {p: t.pack_get(p) for p in packs}
        infos = {p: i for p, i in infos.items() if i is not None and i.state == PackState.SEALED and i.tier != dst}
        if not infos:
            return result
        rw = PackRewrite(tiers.index, tiers.backend, dst, group, tiers.repo_path / "tmp", tiers.pack_size)
        retire: dict[PackId, list[ChunkId]] = {}
        try:
            for pack, info in sorted(infos.items(), key=lambda kv: kv[1].created_ns):
                with tiers.local_copy(tiers.backend(info.tier), pack_name(pack), info.size) as (path, _digest):
                    entries, _ = read_entries(LocalBackend(path.parent), path.name)
                    with tiers.index.read() as t:
                        live = live_entries(t, pack, entries)
                    with open(path, "rb") as f:
                        for e in live:
                            stored, flags = os.pread(f.fileno(), e.stored_len, e.offset), e.flags
                            if tiers.transform is not None:
                                stored, flags = tiers.transform(e.chunk, stored, e.raw_len, e.flags)
                            rw.add(e.chunk, e.location(pack), stored, e.raw_len, flags)
                retire[pack] = [e.chunk for e in entries]
                result.packs_in += 1
                result.bytes_in += info.size
                progress(info.size)
        except BaseException:
            rw.abort()
            raise
        rw.finish(retire)
        result.packs_out, result.bytes_out, result.chunks = (
            rw.result.packs_written, rw.result.bytes_written, rw.result.chunks,
        )  # fmt: skip
        for pack, info in infos.items():
            tiers.count(**{f"moved_packs_{tier_name(info.tier)}_{tier_name(dst)}": 1,
                           f"moved_bytes_{tier_name(info.tier)}_{tier_name(dst)}": info.size})  # fmt: skip
    return result
