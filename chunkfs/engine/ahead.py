"""Bytes written beyond a file's stream, held until the gap before them is filled.

A file's chunks are cut from one stream of its bytes in order (engine/chunker.py),
so that the cuts depend on the bytes alone. Writers do not always write in order:
the kernel's writeback cache sends a sequential writer's pages as concurrent
requests that arrive in any order; safetensors extends the file with ``ftruncate``
and then fills it; several threads ``pwrite`` their own regions of one file; an
``mmap`` writer's pages are written back when the kernel pleases. Whatever lies
beyond the stream's end waits here, and the stream takes it (``take``) as soon as
it reaches it.

The first ``memory`` bytes are held in memory (the writeback cache's reordering is a
few MiB); beyond that they go to a *spool* file on the hot disk at their own file
offsets, an unnamed file (``O_TMPFILE``) that disappears with the process: these
bytes are not committed yet, and an fsync commits them as provisional chunks
(engine/file.py), so a crash loses nothing that was promised. A full disk is a
``NoSpace`` error for the write that did not fit.

Held ranges never overlap: a newer write replaces what it covers (``put`` and
``discard``). Not thread-safe: the file's lock serialises every call.
"""

from __future__ import annotations

import bisect
import os
import weakref
from collections.abc import Iterator
from pathlib import Path

from chunkfs.errors import NoSpace
from chunkfs.store.backends.base import os_error

BLOCK = 8 << 20
"""The most bytes ``take`` returns at once (a spooled range is read back in such pieces)."""


def _memory(ranges) -> int:
    return sum(len(data) for _, _, data in ranges if data is not None)


class Held:
    """Non-overlapping ranges of bytes past the stream, in memory or in a spool file."""

    def __init__(self, spool_dir: Path | None, memory: int) -> None:
        self.spool_dir = spool_dir
        self.memory = memory
        self._starts: list[int] = []  # sorted; _ranges[i] starts at _starts[i]
        self._ranges: list[tuple[int, int, bytes | None]] = []  # (start, end, bytes, or None: in the spool)
        self._in_memory = 0
        self._fd = -1

    def __bool__(self) -> bool:
        return bool(self._ranges)

    @property
    def end(self) -> int:
        """Where the last held range ends (0 when none)."""
        return self._ranges[-1][1] if self._ranges else 0

    @property
    def first(self) -> int | None:
        """Where the first held range starts (None when none)."""
        return self._starts[0] if self._starts else None

    def put(self, offset: int, data: bytes) -> None:
        """Hold ``data`` at ``offset``, replacing whatever it covers."""
        end = offset + len(data)
        self.discard(offset, end)
        if self._in_memory + len(data) <= self.memory:
            self._insert(offset, end, bytes(data))
            self._in_memory += len(data)
            return
        self._spool_write(offset, data)
        self._insert(offset, end, None)

    def discard(self, lo: int, hi: int) -> None:
        """Forget the held bytes in ``[lo, hi)`` (a newer write covers them, or a truncate)."""
        i = max(0, bisect.bisect_right(self._starts, lo) - 1)
        j = i
        while j < len(self._ranges) and self._ranges[j][0] < hi:
            j += 1
        old = self._ranges[i:j]
        keep = []
        for start, end, data in old:
            if end <= lo or start >= hi:
                keep.append((start, end, data))
                continue
            if start < lo:
                keep.append(self._piece(start, end, data, start, lo))
            if end > hi:
                keep.append(self._piece(start, end, data, hi, end))
        if len(keep) == len(old) and all(a is b for a, b in zip(keep, old, strict=True)):
            return  # nothing held in the range
        self._in_memory += _memory(keep) - _memory(old)
        self._ranges[i:j] = keep
        self._starts[i:j] = [r[0] for r in keep]

    @staticmethod
    def _piece(start: int, end: int, data: bytes | None, lo: int, hi: int) -> tuple[int, int, bytes | None]:
        return lo, hi, None if data is None else data[lo - start : hi - start]

    def _insert(self, start: int, end: int, data: bytes | None) -> None:
        i = bisect.bisect_left(self._starts, start)
        self._starts.insert(i, start)
        self._ranges.insert(i, (start, end, data))

    def take(self, offset: int) -> bytes | None:
        """The held bytes that start exactly at ``offset`` (at most ``BLOCK``), now no longer held;
        None when no held range starts there."""
        if not self._starts or self._starts[0] != offset:
            return None
        start, end, data = self._ranges[0]
        n = min(end - start, BLOCK)
        out = data[:n] if data is not None else self._spool_read(start, n)
        self.discard(start, start + n)
        return out

    def pop_first(self) -> tuple[int, bytes] | None:
        """(offset, bytes) of the first held range (at most ``BLOCK`` of it), now no longer held."""
        if not self._starts:
            return None
        offset = self._starts[0]
        return offset, self.take(offset)  # type: ignore[return-value]

    def read(self, lo: int, hi: int) -> Iterator[tuple[int, bytes]]:
        """(offset, bytes) of the held bytes inside ``[lo, hi)``, in order, at most ``BLOCK`` at a
        time (gaps: nothing held there)."""
        i = max(0, bisect.bisect_right(self._starts, lo) - 1)
        while i < len(self._ranges) and self._ranges[i][0] < hi:
            start, end, data = self._ranges[i]
            for a in range(max(start, lo), min(end, hi), BLOCK):
                b = min(a + BLOCK, end, hi)
                yield a, data[a - start : b - start] if data is not None else self._spool_read(a, b - a)
            i += 1

    def clear(self) -> None:
        self._starts.clear()
        self._ranges.clear()
        self._in_memory = 0
        self.close()

    def close(self) -> None:
        """Let go of the spool file (its bytes with it)."""
        if self._fd >= 0:
            self._closer()
            self._fd = -1

    # -- the spool file ----------------------------------------------------------------------

    def _spool_fd(self) -> int:
        if self._fd < 0:
            if self.spool_dir is None:
                raise NoSpace("writes far out of order need a spool directory, and this content has none")
            try:
                self.spool_dir.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.spool_dir, os.O_TMPFILE | os.O_RDWR, 0o600)
            except OSError as e:
                raise os_error(e, f"spool file in {self.spool_dir}") from None
            self._closer = weakref.finalize(self, os.close, self._fd)  # also when the content is dropped
        return self._fd

    def _spool_write(self, offset: int, data: bytes) -> None:
        fd = self._spool_fd()
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as e:
            raise os_error(e, f"spool file in {self.spool_dir}") from None

    def _spool_read(self, offset: int, n: int) -> bytes:
        try:
            data = os.pread(self._fd, n, offset)
        except OSError as e:
            raise os_error(e, f"spool file in {self.spool_dir}") from None
        return data + bytes(n - len(data))  # a short read past what was spooled: never, but zeros then
