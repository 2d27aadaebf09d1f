"""Reading hot-tier chunks ahead of a sequential reader.

A cold read of a file on the hot tier costs, per chunk, a ``pread`` from its
pack and a BLAKE3 check (~2.4 ms for 4 MiB here); taken inline, the reader
waits for both at every chunk boundary (docs/performance.md). When a reader
moves forward through a file, ``ReadAhead`` fetches and verifies the next
``DEPTH`` chunks on a small pool of its own while the reader is still busy
with the current one; the reader then finds them in the engine's chunk cache
(``ChunkIO.get``), or waits for the fetch already under way instead of
reading the chunk a second time.

* **Sequential** is judged per open handle (``ReadStream``): a read that starts
  within ``SEQUENTIAL_SLACK`` of where the previous one ended continues the
  stream (the kernel's read-ahead sends a window's requests concurrently, so
  they arrive slightly out of order). Any other read is random access: the
  handle's queued fetches are cancelled and nothing is fetched ahead.
* **Hot tier only.** Chunks of warm and cold packs come through the remote
  reader (store/tiering/fetch.py), which reads ahead along the pack by itself.
* **Verified like any read.** A fetch ahead is ``ChunkIO.get``: decoded and
  checked against the chunk's BLAKE3 id before it enters the cache.
* **Errors belong to readers.** A fetch ahead that fails logs a warning and
  leaves nothing behind; a reader that reaches the chunk reads it again itself
  and gets the error (EIO, with the line naming the chunk and the pack).
* **Memory.** Fetched chunks live in the chunk cache (``cache.memory``, shared
  with every other read); on top of it the pool decodes at most ``WORKERS``
  chunks at a time (queued fetches hold no data, and are capped by ``MAX_FETCHING``):
  read-ahead adds at most ``WORKERS`` chunks (8 MiB at 4 MiB chunks) to the daemon.
* **One fetch per chunk.** Reads that miss the same chunk at the same time (the
  kernel sends a read-ahead window's requests together) wait for one fetch of
  it, whether a reader or the pool started it (``get``).

Thread-safe. A ``ReadStream`` is touched only under its file's lock (openfiles.py).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from chunkfs.engine.chunks import ChunkIO
from chunkfs.engine.file import FileContent, assemble
from chunkfs.errors import ChunkfsError
from chunkfs.types import HOLE, ChunkId, Tier

log = logging.getLogger(__name__)

DEPTH = 2
"""Chunks fetched ahead of a sequential reader (measured, docs/performance.md: +9–36% cold read
over none; 4 was no better than 2)."""

WORKERS = 2
"""Threads fetching ahead: one per core here; ``pread`` and BLAKE3 release the GIL."""

MAX_FETCHING = 16
"""Fetches under way or queued (readers' own included) beyond which no more are queued for the
pool: the readers are ahead of it, and it would only fetch what they already read."""

SEQUENTIAL_SLACK = 8 << 20
"""How far from the previous read's end a read may start and still count as sequential:
twice the kernel's read-ahead window (fs/mount.py ``READ_AHEAD_KB``), whose requests arrive
in any order."""


class ReadStream:
    """Where one open handle's reader is, and what was fetched ahead of it."""

    __slots__ = ("ahead_to", "next", "pending")

    def __init__(self) -> None:
        self.next = 0  # where a sequential read would start (a first read at 0 is one)
        self.ahead_to = 0  # file offset up to which chunks were asked for
        self.pending: list[Future] = []

    def sequential(self, offset: int, end: int) -> bool:
        """Record a read of ``[offset, end)``; True if it continues this handle's stream."""
        sequential = abs(offset - self.next) <= SEQUENTIAL_SLACK
        self.next = max(self.next, end) if sequential else end
        return sequential


class ReadAhead:
    """A small pool that fetches hot-tier chunks ahead of sequential readers."""

    def __init__(self, chunks: ChunkIO, *, depth: int = DEPTH, workers: int = WORKERS) -> None:
        self.chunks = chunks
        self.depth = depth
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="chunkfs-readahead")
        self._lock = threading.Lock()
        self._fetching: dict[ChunkId, Future] = {}

    def read(self, content: FileContent, stream: ReadStream, offset: int, size: int, lock) -> bytes:
        """A reader's request on an open handle: planned under ``lock`` (the file's: the plan is
        this moment's content), its chunks fetched after the lock is released, the next ones
        fetched ahead when it continues ``stream``."""
        with lock:
            spans = content.spans(offset, size)
            if stream.sequential(offset, offset + size):
                self.follow(stream, content.following(offset + size - 1, self.depth))
            else:
                self.cancel(stream)
        data = assemble(spans, self.get)
        self.chunks.note_read(len(data))
        return data

    def follow(self, stream: ReadStream, upcoming: list[tuple[int, ChunkId, int]]) -> None:
        """Fetch the chunks a sequential reader comes to next: ``(file offset, chunk, length)``
        each, in file order. Chunks already asked for by this stream are skipped."""
        stream.pending = [f for f in stream.pending if not f.done()]
        for start, chunk, length in upcoming:
            if start < stream.ahead_to:
                continue
            stream.ahead_to = start + length
            if chunk == HOLE:
                continue
            with self._lock:
                if chunk in self._fetching or len(self._fetching) >= MAX_FETCHING:
                    continue
                future = self._pool.submit(self._fetch, chunk, length)
                self._fetching[chunk] = future
            future.add_done_callback(lambda f, chunk=chunk: self._done(chunk, f))
            stream.pending.append(future)

    def cancel(self, stream: ReadStream) -> None:
        """Random access: drop what this stream queued and has not started, start afresh."""
        for future in stream.pending:
            future.cancel()
        stream.pending.clear()
        stream.ahead_to = 0

    def get(self, chunk: ChunkId, length: int) -> bytes:
        """``ChunkIO.get``, fetching each chunk once however many reads want it at the same time.

        The kernel's read-ahead sends the requests of one window together: the 1 MiB reads of a
        4 MiB chunk miss the cache at once, and without this each would ``pread`` and verify the
        whole chunk. A read that finds a fetch of its chunk running waits for it, then takes the
        chunk from the cache (or, if that fetch failed, reads it itself and gets the error); a
        fetch still queued for the pool is cancelled and done by the reader at once.
        """
        if chunk == HOLE:
            return self.chunks.get(chunk, length)
        while True:
            with self._lock:
                other = self._fetching.get(chunk)
                if other is None:
                    mine: Future = Future()
                    mine.set_running_or_notify_cancel()
                    self._fetching[chunk] = mine
                    break
            if not other.cancel():
                other.result()
                return self.chunks.get(chunk, length)
        try:
            return self.chunks.get(chunk, length)
        finally:
            mine.set_result(None)
            self._done(chunk, mine)

    def close(self) -> None:
        """Drop queued fetches and wait for running ones (before the repository closes)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _done(self, chunk: ChunkId, future: Future) -> None:
        with self._lock:
            if self._fetching.get(chunk) is future:
                del self._fetching[chunk]

    def _fetch(self, chunk: ChunkId, length: int) -> None:
        try:
            if self._on_hot_tier(chunk):
                self.chunks.get(chunk, length)
        except (ChunkfsError, OSError) as e:  # the reader that reaches this chunk reads it again: its error
            log.warning("read-ahead of chunk %s failed (%s); left to the reader", chunk.hex(), e)
        except Exception:  # a bug: loud, but the reader still reads the chunk itself
            log.exception("read-ahead of chunk %s: internal error", chunk.hex())

    def _on_hot_tier(self, chunk: ChunkId) -> bool:
        packs = self.chunks.packs
        loc = packs.locate(chunk)
        if loc is None:
            return False  # not in the index: damage, for the reader to report
        with packs.index.read() as t:
            info = t.pack_get(loc.pack)
        return info is None or info.tier == Tier.HOT  # no record yet: the open pack, on hot
