"""Write-back: the persistent upload queue and the thread that drains it to the warm tier.

With a warm tier configured, the transaction that seals a hot pack also queues
it (keys.py ``uploads``), so the queue survives crashes and restarts. The
uploader copies queued packs to the warm tier oldest first, two at a time
(``upload_copies``: upload, verify size and BLAKE3, record the copy in
``copies``, unqueue — all under the tier lock). The hot copy stays: it is the
pack's home until the lifecycle policy moves the run to warm, which then costs
a HEAD instead of an upload. Writers never wait for any of this.

When the warm tier fails (endpoint down, throttled, access denied), the
uploader logs it once, records it for ``chunkfs status`` (``meta/upload_error``),
and retries with backoff (1 s doubling to a minute); packs keep landing on hot
meanwhile. The first success logs that the tier is back and clears the error.
Only the process that holds the repository lock runs an uploader (the mount
daemon, or ``chunkfs sync`` when nothing is mounted).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from chunkfs import clock
from chunkfs.background import BackgroundThread
from chunkfs.errors import BackendUnavailable, ChunkfsError, CorruptData
from chunkfs.index import Index
from chunkfs.store.tiering.lock import NEW
from chunkfs.store.tiering.tiers import Tiers
from chunkfs.types import PackId, PackState, Tier

log = logging.getLogger(__name__)

UPLOAD_PACKS = 2
"""Packs the write-back uploads at once: while one pack is read and hashed, waits for its
verifying HEAD (rclone hashes the whole object for its ETag then) or commits to the index,
the other keeps the connections busy."""
FIRST_DELAY = 1.0
MAX_DELAY = 60.0
IDLE_POLL = 30.0
"""An idle uploader looks at the queue this often (entries other processes added)."""
BUSY_POLL = 1.0
"""While another process moves packs (it holds the tier lock), the uploader looks again this often."""
BUSY = -1
BATCH = 2 * UPLOAD_PACKS
"""Packs one tier-lock hold uploads: enough to keep ``UPLOAD_PACKS`` in flight, few enough that
``chunkfs tier`` and ``stop`` do not wait long."""


@dataclass(frozen=True)
class Backlog:
    packs: int
    bytes: int
    oldest_ns: int | None  # when the oldest queued pack was queued

    def oldest_age_s(self, now_ns: int | None = None) -> float:
        if self.oldest_ns is None:
            return 0.0
        return max(0.0, ((now_ns or clock.now_ns()) - self.oldest_ns) / 1e9)


def queued(index: Index) -> list[tuple[PackId, int, int]]:
    """(pack, queued ns, size) of every queued upload, oldest first."""
    out = []
    with index.read() as t:
        for pack, queued_ns in t.uploads():
            info = t.pack_get(pack)
            out.append((pack, queued_ns, info.size if info is not None else 0))
    out.sort(key=lambda row: (row[1], row[0]))
    return out


def backlog(index: Index) -> Backlog:
    rows = queued(index)
    return Backlog(len(rows), sum(size for _, _, size in rows), rows[0][1] if rows else None)


def upload_copies(tiers: Tiers, packs: list[PackId], *, blocking: bool = True) -> list[int | Exception] | None:
    """Copy hot packs to the warm tier, ``UPLOAD_PACKS`` at a time, each verified and recorded
    on its own; return, pack by pack, the bytes uploaded or the error that stopped it (None:
    not ``blocking`` and another tier operation holds the lock).

    The workers run while this thread holds the tier lock, and take no tier lock themselves.
    """
    with tiers.lock.hold(blocking=blocking) as got:
        if not got:
            return None
        with ThreadPoolExecutor(UPLOAD_PACKS, thread_name_prefix="chunkfs-upload") as pool:
            futures = [pool.submit(_upload_copy, tiers, pack) for pack in packs]
        return [f.exception() or f.result() for f in futures]

def _upload_copy(tiers: Tiers, pack: PackId) -> int:
    """Upload one pack (the tier lock held); drop the queue entry of a pack that no longer needs
    it (gone, moved, already copied) and return 0 for it."""
    with tiers.index.read() as t:
        info = t.pack_get(pack)
        has_copy = t.copy_get(pack, Tier.WARM) is not None
    if info is None or info.tier != Tier.HOT or info.state != PackState.SEALED or has_copy:
        with tiers.index.write() as t:
            t.upload_delete(pack)
        return 0
    with tiers.index.write() as t:
        t.move_put(pack, Tier.WARM, NEW, clock.now_ns())
    digest = tiers.copy_verified(pack, Tier.HOT, Tier.WARM, info.size)
    with tiers.index.write() as t:
        t.copy_put(pack, Tier.WARM, clock.now_ns(), digest)
        t.upload_delete(pack)
        t.move_delete(pack, Tier.WARM)
    tiers.count(uploaded_packs=1, uploaded_bytes=info.size)
    return info.size


class Uploader(BackgroundThread):
    """Drains the upload queue, in a background thread (``start``) or inline (``drain``)."""

    thread_name = "chunkfs-uploader"

    def __init__(self, index: Index, tiers: Tiers) -> None:
        super().__init__()
        self.index = index
        self.tiers = tiers
        self._failing = False
        self._broken: set[PackId] = set()  # packs whose upload found them damaged: not retried by this process

    def requeue(self) -> int:
        """Queue every sealed hot pack that has no warm copy and no queue entry (e.g. a warm tier
        was added to an existing repository); return how many."""
        now = clock.now_ns()
        with self.index.read() as t:
            missing = [
                pack
                for pack, info in t.packs()
                if info.tier == Tier.HOT
                and info.state == PackState.SEALED
                and t.upload_get(pack) is None
                and t.copy_get(pack, Tier.WARM) is None
            ]
        if missing:
            with self.index.write() as t:
                for pack in missing:
                    t.upload_put(pack, now)
            self.wake()
        return len(missing)

    def run_once(self, *, blocking: bool = True) -> int | None:
        """Upload the oldest ``BATCH`` queued packs; return their bytes (0: dropped as unneeded or
        found damaged), None if none is left, ``BUSY`` if not ``blocking`` and another tier
        operation holds the lock. Any other failure is raised once the batch is done."""
        batch = [pack for pack, _queued_ns, _size in queued(self.index) if pack not in self._broken][:BATCH]
        if not batch:
            return None
        results = upload_copies(self.tiers, batch, blocking=blocking)
        if results is None:
            return BUSY
        done, failure = 0, None
        for pack, result in zip(batch, results):
            if isinstance(result, CorruptData):
                self._broken.add(pack)
                log.error("cannot upload pack %s: %s", pack.hex(), result)
                self._record_error(str(result))
            elif isinstance(result, Exception):
                failure = failure or result
            else:
                done += result
        if failure is not None:
            raise failure
        if len(self._broken.intersection(batch)) < len(batch):
            self._recovered()
        return done

    def drain(self, progress: Callable[[int], None] = lambda n: None) -> int:
        """Upload every queued pack in this thread; return the bytes uploaded. Errors propagate."""
        total = 0
        while (done := self.run_once()) is not None:
            total += done
            progress(done)
        return total

    # -- the background thread --------------------------------------------------------------------

    def stop(self, timeout: float = 10.0) -> bool | None:
        """Stop after the current batch of uploads (waiting at most ``timeout``; an upload cut short
        is redone later)."""
        ended = super().stop(timeout)
        if ended is False:
            log.warning("the uploader is still busy with a pack; it is uploaded again at the next start")
        return ended

    def _loop(self) -> None:
        delay = FIRST_DELAY
        while not self.stopping:
            try:
                done = self.run_once(blocking=False)  # never stuck behind a long `chunkfs tier` at unmount
            except BackendUnavailable as e:
                self._failed(e)
                self._stop.wait(delay)
                delay = min(2 * delay, MAX_DELAY)
                continue
            except ChunkfsError as e:
                log.error("upload failed: %s", e)
                self._record_error(str(e))
                self._stop.wait(delay)
                delay = min(2 * delay, MAX_DELAY)
                continue
            except Exception:  # a bug: keep the thread alive and say so
                log.exception("uploader: unexpected error")
                self._stop.wait(delay)
                delay = min(2 * delay, MAX_DELAY)
                continue
            delay = FIRST_DELAY
            if done == BUSY:
                self._stop.wait(BUSY_POLL)
            elif done is None:
                self.pause(IDLE_POLL)

    def _failed(self, e: ChunkfsError) -> None:
        if not self._failing:
            b = backlog(self.index)
            log.warning(
                "warm tier unavailable, uploads wait (%d packs, %d bytes stay on the hot tier; retrying): %s",
                b.packs, b.bytes, e,
            )  # fmt: skip
            self._record_error(str(e))
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.warning("warm tier reachable again: uploading the backlog")
            self._failing = False
        with self.index.read() as t:
            had_error = t.upload_error() is not None
        if had_error:
            with self.index.write() as t:
                t.upload_error_put(0, None)

    def _record_error(self, message: str) -> None:
        try:
            with self.index.write() as t:
                t.upload_error_put(clock.now_ns(), message)
        except ChunkfsError as e:
            log.warning("cannot record the upload error: %s", e)
