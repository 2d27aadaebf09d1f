"""The re-encoding repack: one run's packs rewritten into new, smaller packs on warm or cold.

The hot tier keeps chunks as ingest stored them (raw, or zstd where a sample showed it
clearly worth it): reads and writes there must run at disk speed. When the lifecycle
policy sends a complete run on to warm (``lifecycle.warm_level``) or to cold
(``cold_level``), its packs are not copied as they are: their live chunks are re-encoded
(``Tiers.transform``: zstd at that level, byte planes first for float tensors, or a delta
against the same bytes of the next checkpoint (``Tiers.delta_plan``, namespace/deltas.py),
whichever stores the chunk smallest) into new packs of that run only — and so are its packs that
hot pressure evicted to warm as they were (``unencoded`` in keys.py), rewritten on warm —, through the one pack rewrite
(rewrite.py): every chunk location and pack home switches in one transaction, under the
tier lock, and the old packs — hot home and write-back copy on warm alike — are deleted
(in a shared repository the warm object once every node has learnt the new locations:
rewrite.py, ``relocate``).
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import BinaryIO

from chunkfs.store.maintenance.rewrite import PackRewrite, file_entries, live_entries
from chunkfs.store.pack.files import pack_name
from chunkfs.store.pack.format import Entry
from chunkfs.store.tiering.tiers import Tiers
from chunkfs.types import ChunkId, PackId, PackState, Tier, tier_name

THREADS = min(8, os.cpu_count() or 1)
"""Chunks re-encoded at once: zstd, the byte planes and BLAKE3 release the GIL, so a repack uses
every core the node leaves to it (a mount's runs at the lowest priority: only idle ones)."""


@dataclass
class RepackResult:
    packs_in: int = 0
    packs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    chunks: int = 0
    deltas: int = 0  # chunks stored as deltas


def repack(
    tiers: Tiers, group: str, packs: list[PackId], dst: Tier, level: int,
    progress: Callable[[int], None] = lambda n: None, stop: Callable[[], bool] = lambda: False,
) -> RepackResult:  # fmt: skip
    """Rewrite the live chunks of ``packs`` (one run's) into new packs on ``dst``, re-encoded by
    ``tiers.transform`` at zstd ``level``, oldest first, in batches of about one pack's size:
    each batch holds the tier lock only while it is rewritten, so that the uploader and
    hot-pressure evictions are never held up for a whole run (a mount re-encodes at the
    lowest CPU priority). ``stop()`` is asked before each batch: the rest waits for a later run."""
    result = RepackResult()
    # deltas need the repository's whole tree to pair chunks (in a shared one, the other nodes
    # learn the bases from the relocate change: cluster/maintenance.py)
    bases = tiers.delta_plan(group) if tiers.delta_plan is not None else {}
    with tiers.index.read() as t:
        infos = sorted(((p, t.pack_get(p)) for p in packs), key=lambda kv: kv[1].created_ns if kv[1] else 0)
    batch: list[PackId] = []
    size = 0
    for pack, info in infos:
        if info is None:
            continue
        batch.append(pack)
        size += info.size
        if size >= tiers.pack_size:
            if stop():
                return result
            _rewrite(tiers, group, batch, dst, level, bases, progress, result)
            batch, size = [], 0
    if batch and not stop():
        _rewrite(tiers, group, batch, dst, level, bases, progress, result)
    return result


def _rewrite(
    tiers: Tiers, group: str, packs: list[PackId], dst: Tier, level: int, bases: dict[ChunkId, ChunkId],
    progress: Callable[[int], None], result: RepackResult,
) -> None:  # fmt: skip
    """One batch: its live chunks into new packs on ``dst``, the old packs retired."""
    with tiers.lock.hold():
        with tiers.index.read() as t:  # already on dst: only one evicted there as it was
            infos = {p: i for p in packs if (i := t.pack_get(p)) is not None and i.state == PackState.SEALED
                     and (i.tier != dst or t.is_unencoded(p))}  # fmt: skip
        if not infos:
            return
        rw = PackRewrite(
            tiers.index, tiers.backend, dst, group, tiers.repo_path / "tmp", tiers.pack_size, relocate=tiers.shared
        )
        retire: dict[PackId, list[ChunkId]] = {}
        pool = ThreadPoolExecutor(THREADS, thread_name_prefix="chunkfs-reencode")
        try:
            for pack, info in infos.items():
                if info.tier == Tier.HOT:
                    tiers.stage_pinned(pack)  # pinned data stays local (`prefetch --pin`)
                with tiers.local_copy(tiers.backend(info.tier), pack_name(pack), info.size) as (path, _digest):
                    entries = file_entries(path)
                    with tiers.index.read() as t:
                        live = live_entries(t, pack, entries)
                    with open(path, "rb") as f, contextlib.closing(_encoded(tiers, f, live, level, bases, pool)) as chunks:
                        for e, stored, flags in chunks:
                            rw.add(e.chunk, e.location(pack), stored, e.raw_len, flags)
                retire[pack] = [e.chunk for e in entries]
                progress(info.size)
        except BaseException:
            rw.abort()
            raise
        finally:
            pool.shutdown()
        rw.finish(retire)
    result.packs_in += len(infos)
    result.bytes_in += sum(i.size for i in infos.values())
    result.packs_out += rw.result.packs_written
    result.bytes_out += rw.result.bytes_written
    result.chunks += rw.result.chunks
    result.deltas += rw.result.deltas
    for info in infos.values():
        src, to = tier_name(info.tier), tier_name(dst)
        tiers.count(**{f"moved_packs_{src}_{to}": 1, f"moved_bytes_{src}_{to}": info.size})


def _encoded(
    tiers: Tiers, f: BinaryIO, live: list[Entry], level: int, bases: dict[ChunkId, ChunkId], pool: ThreadPoolExecutor,
) -> Iterator[tuple[Entry, bytes, int]]:  # fmt: skip
    """Each live entry of the pack open as ``f`` with its bytes re-encoded (stored bytes, flags; a
    delta where ``bases`` names a base and that is smaller), in order; at most ``2 * THREADS`` chunks in flight, so memory stays a few chunks. Closed early
    (an error), it waits for the chunks in flight: none reads ``f`` after it is closed."""

    def one(e: Entry) -> tuple[Entry, bytes, int]:
        stored = os.pread(f.fileno(), e.stored_len, e.offset)
        if tiers.transform is None:
            return e, stored, e.flags
        return (e, *tiers.transform(e.chunk, stored, e.raw_len, e.flags, level, bases.get(e.chunk)))

    window: collections.deque[Future] = collections.deque()
    try:
        for e in live:
            window.append(pool.submit(one, e))
            if len(window) >= 2 * THREADS:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        for future in window:
            future.cancel()
        wait(window)
