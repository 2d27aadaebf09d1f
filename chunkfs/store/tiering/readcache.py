"""The local disk read cache: chunks fetched from the warm and cold tiers, kept for the next read.

Layout: ``DIR/chunks/ab/<chunk id hex>``, one file per chunk: its flags (one
byte) and then its stored bytes exactly as they lie in the pack (the flags are
kept because a re-encoding repack may store the same chunk compressed differently).

Several processes share the directory (the mount daemon, ``chunkfs prefetch``,
``chunkfs export``): files are written to a temporary name and renamed into
place, found by name, and their mtime is their recency (touched on every hit).
Each process keeps an in-memory index of the files it knows; eviction rescans
the directory so that files written by other processes count too. It evicts
the least recently used files down to 90% of the size limit, so it runs once
per tenth of the cache filled, not at every insert.

Nothing here is trusted: the engine verifies each chunk's BLAKE3 when it
decodes it, and a cached chunk that fails is dropped and fetched again
(``discard``). Chunks named by a pin (``pinned()``) are never evicted, even
when that keeps the cache over its limit (logged once).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from chunkfs.types import ChunkId

log = logging.getLogger(__name__)

LOW_WATERMARK = 0.9
STALE_TMP_S = 3600


class ReadCache:
    """A size-limited, LRU, pin-aware directory of chunks; thread-safe."""

    def __init__(self, root: Path, capacity: int, pinned: Callable[[], set[ChunkId]]) -> None:
        self.root = Path(root) / "chunks"
        self.capacity = capacity
        self._pinned = pinned
        self._lock = threading.Lock()
        self._entries: OrderedDict[ChunkId, int] | None = None  # chunk → file size, least recent first
        self._bytes = 0
        self._warned_full = False
        self.hits = self.misses = self.evicted = 0

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def _path(self, chunk: ChunkId) -> Path:
        h = chunk.hex()
        return self.root / h[:2] / h

    def _index(self) -> OrderedDict[ChunkId, int]:
        if self._entries is None:
            self._rescan()
        return self._entries

    def _rescan(self) -> None:
        """Rebuild the in-memory index from the directory (LRU order = mtime order)."""
        found: list[tuple[int, ChunkId, int]] = []
        now = time.time()
        try:
            subdirs = list(os.scandir(self.root))
        except FileNotFoundError:
            subdirs = []
        for sub in subdirs:
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub.path):
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                if entry.name.endswith(".tmp"):
                    if now - st.st_mtime > STALE_TMP_S:  # a writer died mid-write
                        _unlink(entry.path)
                    continue
                try:
                    chunk = bytes.fromhex(entry.name)
                except ValueError:
                    continue
                found.append((st.st_mtime_ns, chunk, st.st_size))
        found.sort()
        self._entries = OrderedDict((chunk, size) for _, chunk, size in found)
        self._bytes = sum(self._entries.values())

    # -- reading ---------------------------------------------------------------------------

    def get(self, chunk: ChunkId) -> tuple[int, bytes] | None:
        """(flags, stored bytes) of a cached chunk, or None."""
        path = self._path(chunk)
        try:
            with open(path, "rb") as f:
                data = f.read()
            os.utime(path)
        except FileNotFoundError:
            with self._lock:
                self.misses += 1
                if self._entries is not None and self._entries.pop(chunk, None) is not None:
                    self._bytes = sum(self._entries.values())
            return None
        except OSError as e:
            log.warning("read cache %s: %s", path, e)
            return None
        if not data:
            self.discard(chunk)
            return None
        with self._lock:
            self.hits += 1
            entries = self._index()
            if chunk not in entries:  # written by another process
                entries[chunk] = len(data)
                self._bytes += len(data)
            entries.move_to_end(chunk)
        return data[0], data[1:]

    def has(self, chunk: ChunkId) -> bool:
        """Whether the chunk is cached (by this or another process)."""
        return self.contains(chunk) or self._path(chunk).exists()

    def contains(self, chunk: ChunkId) -> bool:
        """Whether this process knows the chunk is cached (no disk access)."""
        with self._lock:
            return self._entries is not None and chunk in self._entries

    # -- writing -----------------------------------------------------------------------------

    def put(self, chunk: ChunkId, flags: int, stored: bytes) -> None:
        """Cache a chunk's stored bytes. Best effort: a full or broken disk only logs."""
        if not self.enabled:
            return
        path = self._path(chunk)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(bytes((flags,)))
                f.write(stored)
            os.replace(tmp, path)
        except OSError as e:
            _unlink(tmp)
            log.warning("cannot add to the read cache %s: %s", self.root, e)
            return
        size = len(stored) + 1
        with self._lock:
            entries = self._index()
            self._bytes += size - entries.get(chunk, 0)
            entries[chunk] = size
            entries.move_to_end(chunk)
            if self._bytes > self.capacity:
                self._evict_locked()

    def discard(self, chunk: ChunkId) -> bool:
        """Remove a chunk (it failed verification); True if it was cached."""
        path = self._path(chunk)
        existed = path.exists()
        _unlink(path)
        with self._lock:
            if self._entries is not None and self._entries.pop(chunk, None) is not None:
                self._bytes = sum(self._entries.values())
        return existed

    def _evict_locked(self) -> None:
        self._rescan()  # count what other processes added
        target = int(self.capacity * LOW_WATERMARK)
        if self._bytes <= self.capacity:
            return
        pinned = self._pinned()
        for chunk in list(self._entries):
            if self._bytes <= target:
                break
            if chunk in pinned:
                continue
            _unlink(self._path(chunk))
            self._bytes -= self._entries.pop(chunk)
            self.evicted += 1
        if self._bytes > self.capacity and not self._warned_full:
            self._warned_full = True
            log.warning(
                "read cache %s: pinned chunks alone exceed cache.disk (%d bytes); `chunkfs unpin` some",
                self.root, self.capacity,
            )  # fmt: skip

    def clear(self, *, keep_pinned: bool = False) -> int:
        """Drop every cached chunk (but pinned ones, if asked); return how many were removed."""
        with self._lock:
            self._rescan()
            pinned = self._pinned() if keep_pinned else set()
            removed = 0
            for chunk in list(self._entries):
                if chunk in pinned:
                    continue
                _unlink(self._path(chunk))
                self._bytes -= self._entries.pop(chunk)
                removed += 1
            return removed

    def usage(self) -> tuple[int, int]:
        """(bytes, chunks) in the cache, as found on disk now."""
        with self._lock:
            self._rescan()
            return self._bytes, len(self._entries)


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("cannot remove %s: %s", path, e)
