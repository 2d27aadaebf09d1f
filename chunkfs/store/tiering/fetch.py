"""Reading chunks from the warm and cold tiers: ranged GETs, the read cache, read-ahead.

A chunk on a remote tier is fetched with a ranged GET of just its stored bytes
and kept in the disk read cache (``readcache.py``). The engine verifies its
BLAKE3 when it decodes it.

**Read-ahead.** A run's packs hold its files' new chunks in the order they
were written, so a model read front to back reads each pack front to back. A
miss whose chunk directly follows the previous chunk read from the same pack
(or is the pack's first) is *sequential*: the reader then fetches the pack's
footer once (its chunk list) and schedules the next ``window`` bytes of chunks
as ranged GETs of up to ``FETCH_BLOCK`` bytes each, run by a pool of
``threads``; each read of a chunk that read-ahead brought in pushes the window
further. When the window runs past the end of the pack it continues into the
run's next pack (the one sealed next on the same tier: a file written front to
back continues there), so the pipeline does not drain at pack boundaries.
Fetched chunks wait in a bounded in-memory staging area (and in the disk
cache), so the reader usually finds its next chunk there or in flight. Staged
chunks are slices of the GET's buffer (no copy), so ``read`` returns a
bytes-like object, not always ``bytes``.
Plain cache hits (pinned or prefetched data) never trigger read-ahead, so
reading a pinned model makes no request at all. Random reads fetch one chunk
at a time.

``stage`` fetches a given set of chunks (``chunkfs prefetch``) the same way,
several ranges at once.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from chunkfs import clock
from chunkfs.errors import BackendUnavailable, ChunkfsError, CorruptData
from chunkfs.index import Index
from chunkfs.index.txn import RunRecord
from chunkfs.store.pack import format as packfmt
from chunkfs.store.pack.files import pack_name
from chunkfs.store.tiering.readcache import ReadCache
from chunkfs.store.tiering.tiers import Tiers
from chunkfs.types import ChunkId, ChunkLocation, PackId, PackInfo, Tier, tier_name

log = logging.getLogger(__name__)

FETCH_BLOCK = 8 << 20
"""Largest ranged GET of read-ahead and prefetch: big enough to run at the link's speed,
small enough to spread over the threads."""
FOOTER_GUESS = 64 << 10
"""One GET of a pack's last bytes usually holds its whole footer (~1,300 chunks)."""
NOTE_READ_EVERY_NS = 60 * 10**9
FOOTERS_KEPT = 256


@dataclass(frozen=True, slots=True)
class _Job:
    pack: PackId
    tier: Tier
    entries: tuple[packfmt.Entry, ...]  # contiguous in the pack, in order


class RemoteReader:
    """Chunks of warm/cold packs by ranged GET, through the disk cache, with read-ahead; thread-safe."""

    def __init__(self, index: Index, tiers: Tiers, cache: ReadCache, *, window: int, threads: int) -> None:
        self.index = index
        self.tiers = tiers
        self.cache = cache
        self.window = window
        self.threads = threads
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: dict[ChunkId, Future] = {}
        self._staged: OrderedDict[ChunkId, tuple[int, bytes]] = OrderedDict()
        self._staged_bytes = 0
        self._footers: OrderedDict[PackId, tuple[list[packfmt.Entry], dict[int, int]]] = OrderedDict()
        self._last_end: OrderedDict[PackId, int] = OrderedDict()  # pack → end of the last chunk read from it
        self._successors: dict[PackId, tuple] = {}  # pack → (next pack of its run, its info), () for none
        self._footers_pending: set[PackId] = set()
        self._noted: dict[str, int] = {}
        self._closed = False
        self.bytes_by_tier: dict[Tier, int] = {Tier.WARM: 0, Tier.COLD: 0}
        self.requests = 0
        self.readahead_bytes = 0

    # -- the read path ----------------------------------------------------------------------

    def read(self, chunk: ChunkId, loc: ChunkLocation, info: PackInfo) -> tuple[int, bytes]:
        """(flags, stored bytes — or a read-only memoryview of them) of a chunk in a remote pack."""
        self._note_read(info.group)
        with self._lock:
            staged = self._staged.pop(chunk, None)
            if staged is not None:
                self._staged_bytes -= len(staged[1])
            future = self._inflight.get(chunk) if staged is None else None
        if staged is not None:
            self._advance(loc, info)
            return staged
        if future is not None:
            result = self._await_readahead(chunk, future)
            if result is not None:
                self._advance(loc, info)
                return result
        cached = self.cache.get(chunk)
        if cached is not None:
            self._remember(loc)
            return cached
        if self.tiers.archive(info.tier):
            raise _archived(info, self.tiers.repo_path)
        if self.window and self._sequential(loc):
            self._advance(loc, info, including=True)
            with self._lock:
                future = self._inflight.get(chunk)
            if future is not None:
                result = self._await_readahead(chunk, future)
                if result is not None:
                    return result
        data = self._get(info.tier, loc.pack, loc.offset, loc.stored_len)
        if len(data) != loc.stored_len:
            raise CorruptData(
                f"chunk {chunk.hex()} in pack {loc.pack.hex()}: pack is truncated "
                f"(read {len(data)} of {loc.stored_len} bytes); run `chunkfs fsck`"
            )
        self.cache.put(chunk, loc.flags, data)
        self._remember(loc)
        return loc.flags, data

    def _await_readahead(self, chunk: ChunkId, future: Future) -> tuple[int, bytes] | None:
        """The chunk from a read-ahead in flight (taken out of the staging area), or None where it failed."""
        try:
            result = future.result()[chunk]
        except ChunkfsError as e:
            log.info("read-ahead of chunk %s failed (%s); fetching it alone", chunk.hex(), e)
            return None
        self._take_staged(chunk)
        return result

    def discard(self, chunk: ChunkId) -> bool:
        """Forget a chunk's cached bytes (they failed verification); True if there were any."""
        with self._lock:
            staged = self._staged.pop(chunk, None)
            if staged is not None:
                self._staged_bytes -= len(staged[1])
        return self.cache.discard(chunk) or staged is not None

    def drop_staged(self) -> None:
        """Forget read-ahead data held in memory (and where packs were being read)."""
        with self._lock:
            self._staged.clear()
            self._staged_bytes = 0
            self._last_end.clear()
            self._successors.clear()

    def _get(self, tier: Tier, pack: PackId, offset: int, length: int) -> bytes:
        data = self.tiers.backend(tier).get_range(pack_name(pack), offset, length)
        with self._lock:
            self.requests += 1
            self.bytes_by_tier[tier] = self.bytes_by_tier.get(tier, 0) + len(data)
        return data

    def _note_read(self, group: str) -> None:
        """Record the run's last read (for warm→cold by last access), at most once a minute."""
        now = clock.now_ns()
        if not group or now - self._noted.get(group, 0) < NOTE_READ_EVERY_NS:
            return  # no group: a pack `index rebuild` found without its index entry (no run to note)
        self._noted[group] = now
        try:
            with self.index.write() as t:
                rec = t.run_get(group)
                t.run_put(group, RunRecord(rec.completed_ns, now, rec.held))
        except ChunkfsError as e:  # a full index must not fail a read
            log.warning("cannot record the last read of %s: %s", group, e)

    # -- sequential detection and read-ahead -------------------------------------------------------

    def _sequential(self, loc: ChunkLocation) -> bool:
        first = packfmt.HEADER.size + packfmt.RECORD.size
        with self._lock:
            last = self._last_end.get(loc.pack)
        return loc.offset == first or (last is not None and loc.offset == last + packfmt.RECORD.size)

    def _remember(self, loc: ChunkLocation) -> None:
        with self._lock:
            self._last_end[loc.pack] = loc.offset + loc.stored_len
            self._last_end.move_to_end(loc.pack)
            while len(self._last_end) > FOOTERS_KEPT:
                self._last_end.popitem(last=False)

    def _advance(self, loc: ChunkLocation, info: PackInfo, *, including: bool = False) -> None:
        """Keep the next ``window`` bytes after ``loc`` (and ``loc`` itself if ``including``) staged or
        in flight — into the run's next pack when this one ends before the window does."""
        self._remember(loc)
        if not self.window or self.tiers.archive(info.tier):
            return
        try:
            entries, by_offset = self._footer(loc.pack, info)
        except ChunkfsError as e:
            log.info("no read-ahead in pack %s: %s", loc.pack.hex(), e)
            return
        i = by_offset.get(loc.offset)
        if i is None:
            return
        if including:  # the chunk being waited for comes alone: it arrives before its neighbours
            self._schedule(loc.pack, info.tier, entries[i : i + 1], readahead=True)
        wanted, total = [], 0
        for e in entries[i + 1 :]:
            if total >= self.window:
                break
            total += e.stored_len
            wanted.append(e)
        self._schedule(loc.pack, info.tier, wanted, readahead=True)
        if total < self.window and (nxt := self._next_pack(loc.pack, info)) is not None:
            with self._lock:
                if self._closed or nxt[0] in self._footers_pending:
                    return
                self._footers_pending.add(nxt[0])
                self._executor().submit(self._start_pack, nxt[0], nxt[1], self.window - total)

    def _next_pack(self, pack: PackId, info: PackInfo) -> tuple[PackId, PackInfo] | None:
        """The pack of the same run sealed next on the same tier: where a file written front to back
        continues once this pack was full."""
        with self._lock:
            cached = self._successors.get(pack)
        if cached is not None:
            return cached or None
        with self.index.read() as t:
            same = sorted(
                ((i.created_ns, p, i) for p, i in t.packs() if i.group == info.group and i.tier == info.tier),
                key=lambda row: (row[0], row[1]),
            )
        order = [(p, i) for _, p, i in same]
        with self._lock:
            for (p, _), following in zip(order, order[1:] + [None]):
                self._successors[p] = following or ()
            while len(self._successors) > 4 * FOOTERS_KEPT:
                self._successors.pop(next(iter(self._successors)))
            found = self._successors.get(pack)
        return found or None

    def _start_pack(self, pack: PackId, info: PackInfo, budget: int) -> None:
        """Read-ahead into the first ``budget`` bytes of ``pack`` (runs in the pool)."""
        try:
            entries, _ = self._footer(pack, info)
            wanted, total = [], 0
            for e in entries:
                if total >= budget:
                    break
                total += e.stored_len
                wanted.append(e)
            self._schedule(pack, info.tier, wanted, readahead=True)
        except ChunkfsError as e:
            log.info("no read-ahead into pack %s: %s", pack.hex(), e)
        finally:
            with self._lock:
                self._footers_pending.discard(pack)

    def _footer(self, pack: PackId, info: PackInfo) -> tuple[list[packfmt.Entry], dict[int, int]]:
        with self._lock:
            found = self._footers.get(pack)
            if found is not None:
                self._footers.move_to_end(pack)
                return found
        size = info.size
        tail = self._get(info.tier, pack, max(0, size - FOOTER_GUESS), min(size, FOOTER_GUESS))
        located = packfmt.decode_trailer(tail, size, pack_name(pack))
        if located is None:
            raise CorruptData(f"pack {pack.hex()}: no footer")
        offset, _count = located
        need = size - offset
        footer = tail[-need:] if need <= len(tail) else self._get(info.tier, pack, offset, need)
        entries = sorted(packfmt.decode_footer(footer, pack_name(pack)), key=lambda e: e.offset)
        found = (entries, {e.offset: i for i, e in enumerate(entries)})
        with self._lock:
            self._footers[pack] = found
            while len(self._footers) > FOOTERS_KEPT:
                self._footers.popitem(last=False)
        return found

    def _schedule(self, pack: PackId, tier: Tier, entries: Iterable[packfmt.Entry], *, readahead: bool) -> list[Future]:
        """Fetch the entries that are neither staged, cached nor in flight; contiguous ones together."""
        jobs: list[list[packfmt.Entry]] = []
        with self._lock:
            if self._closed:
                return []
            run: list[packfmt.Entry] = []
            run_bytes = 0
            for e in entries:
                busy = e.chunk in self._inflight or e.chunk in self._staged or self.cache.contains(e.chunk)
                contiguous = run and e.offset == run[-1].offset + run[-1].stored_len + packfmt.RECORD.size
                if run and (busy or not contiguous or run_bytes + e.stored_len > FETCH_BLOCK):
                    jobs.append(run)
                    run, run_bytes = [], 0
                if not busy:
                    run.append(e)
                    run_bytes += e.stored_len
            if run:
                jobs.append(run)
            futures = []
            pool = self._executor()
            for job in jobs:
                f: Future = Future()
                for e in job:
                    self._inflight[e.chunk] = f
                futures.append(f)
                pool.submit(self._run_job, _Job(pack, tier, tuple(job)), f, readahead)
        return futures

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="chunkfs-fetch")
        return self._pool

    def _run_job(self, job: _Job, future: Future, readahead: bool) -> None:
        first, last = job.entries[0], job.entries[-1]
        results: dict[ChunkId, tuple[int, bytes]] = {}
        try:
            data = self._get(job.tier, job.pack, first.offset, last.offset + last.stored_len - first.offset)
            view = memoryview(data)
            for e in job.entries:
                lo = e.offset - first.offset
                stored = view[lo : lo + e.stored_len]  # no copy: the chunks share the response's buffer
                if len(stored) != e.stored_len:
                    raise CorruptData(f"pack {job.pack.hex()}: truncated at offset {e.offset}; run `chunkfs fsck`")
                results[e.chunk] = (e.flags, stored)
                self.cache.put(e.chunk, e.flags, stored)
        except Exception as e:  # noqa: BLE001 — whatever failed, the future must say so: readers wait on it
            with self._lock:
                for entry in job.entries:
                    if self._inflight.get(entry.chunk) is future:
                        del self._inflight[entry.chunk]
            future.set_exception(e if isinstance(e, ChunkfsError) else CorruptData(f"fetching from pack {job.pack.hex()}: {e!r}"))
            return
        with self._lock:
            if readahead:
                self.readahead_bytes += sum(len(s) for _, s in results.values())
                for chunk, value in results.items():
                    if chunk not in self._staged:
                        self._staged[chunk] = value
                        self._staged_bytes += len(value[1])
                limit = max(2 * self.window, 2 * FETCH_BLOCK)
                while self._staged_bytes > limit:  # the disk cache still has them
                    _, (_, dropped) = self._staged.popitem(last=False)
                    self._staged_bytes -= len(dropped)
            for entry in job.entries:
                if self._inflight.get(entry.chunk) is future:
                    del self._inflight[entry.chunk]
        future.set_result(results)

    def _take_staged(self, chunk: ChunkId) -> None:
        with self._lock:
            staged = self._staged.pop(chunk, None)
            if staged is not None:
                self._staged_bytes -= len(staged[1])

    # -- staging on request (chunkfs prefetch) ---------------------------------------------------

    def stage(
        self,
        wanted: dict[PackId, tuple[PackInfo, list[tuple[ChunkId, ChunkLocation]]]],
        progress: Callable[[int], None],
    ) -> int:
        """Fetch the given chunks (by pack) into the disk cache; return the bytes fetched."""
        futures: list[Future] = []
        for pack, (info, chunks) in wanted.items():
            missing = [(c, loc) for c, loc in chunks if not self.cache.has(c)]
            progress(sum(loc.stored_len for _, loc in chunks) - sum(loc.stored_len for _, loc in missing))
            if not missing:
                continue
            if self.tiers.archive(info.tier):
                raise _archived(info, self.tiers.repo_path)
            entries = sorted(
                (packfmt.Entry(c, loc.offset, loc.stored_len, loc.raw_len, loc.flags) for c, loc in missing),
                key=lambda e: e.offset,
            )
            futures += self._schedule(pack, info.tier, entries, readahead=False)
        fetched = 0
        for f in futures:
            n = sum(len(s) for _, s in f.result().values())  # raises the job's error
            fetched += n
            progress(n)
        return fetched

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _archived(info: PackInfo, repo_path) -> ChunkfsError:
    """The error of a read of an archived pack: the command to run, with ``--repo`` so that it
    works as written wherever it is read (a mount's log names repository paths)."""
    run = info.group or "/"
    return BackendUnavailable(
        f"{run}: its data is in the {tier_name(info.tier)} archive tier and must be restored first; "
        f"run `chunkfs thaw {run} --repo {repo_path}`"
    )
