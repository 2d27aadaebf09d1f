"""The hand-off: a byte ring in shared memory between the mount daemon and one worker process.

The daemon reserves room for each written block (``reserve``), copies the block in
(``put``: one ``memcpy``) and sends the worker a message naming it; the worker copies
it out (``take``) and reports it taken; the daemon then frees it (``free``) and reuses
the space once every block before it is free too. Positions grow without bound (a
position counts the bytes reserved before it); ``pos % size`` is where the bytes lie.
A block never wraps: one that would cross the end starts at the beginning again.

The lock guards only the bookkeeping, never a copy or a message: the thread that
reads the worker's reports must never wait behind a sender that waits on the worker.

The memory is a ``memfd`` (anonymous, passed to the worker as a file descriptor):
nothing is left behind in /dev/shm when either process dies. Its size bounds the
bytes written but not yet taken, whatever the number of files: a writer that finds
it full waits in ``reserve`` until the worker has taken enough — the back-pressure of
the write path.
"""

from __future__ import annotations

import collections
import mmap
import os
import threading


class Ring:
    """One hand-off ring: ``reserve``, ``put`` and ``free`` are the daemon's, ``take`` the worker's."""

    def __init__(self, size: int, fd: int | None = None) -> None:
        """A new ring of ``size`` bytes, or (``fd``) the worker's view of the daemon's."""
        if fd is None:
            fd = os.memfd_create("chunkfs-handoff", 0)
            os.ftruncate(fd, size)
        self.fd = fd
        self.size = size
        self._map = mmap.mmap(fd, size)
        self._view = memoryview(self._map)
        self._head = 0  # the next position to reserve at
        self._tail = 0  # every byte before it is free
        self._blocks: collections.deque[list] = collections.deque()  # [start, end, taken] in reserve order
        self._taken: dict[int, list] = {}  # start → its block, until freed
        self._changed = threading.Condition()

    @property
    def used(self) -> int:
        """Bytes reserved and not yet freed (skipped ends included)."""
        return self._head - self._tail

    def reserve(self, n: int, *, wait: bool = False, give_up=lambda: False) -> int | None:
        """Room for ``n`` bytes (at most ``size``): its position; None while the ring is too full
        (with ``wait``: only once ``give_up()`` says so — it is asked every second)."""
        with self._changed:
            while True:
                pos = self._head
                at = pos % self.size
                if at + n > self.size:
                    pos += self.size - at  # never wrap a block: skip to the start
                if pos + n - self._tail <= self.size:
                    break
                if not wait or give_up():
                    return None
                self._changed.wait(1.0)
            self._head = pos + n
            block = [pos, pos + n, False]
            self._blocks.append(block)
            self._taken[pos] = block
            return pos

    def put(self, pos: int, data) -> None:
        at = pos % self.size
        self._view[at : at + len(data)] = data

    def take(self, pos: int, n: int) -> bytes:
        """A copy of the ``n`` bytes put at ``pos`` (the worker keeps what it takes)."""
        at = pos % self.size
        return bytes(self._view[at : at + n])

    def free(self, pos: int) -> None:
        """The block at ``pos`` was taken; the space up to the first block still in use is free."""
        with self._changed:
            block = self._taken.pop(pos, None)
            if block is None:
                return
            block[2] = True
            while self._blocks and self._blocks[0][2]:
                self._tail = self._blocks.popleft()[1]
            if not self._blocks:
                self._tail = self._head
            self._changed.notify_all()

    def free_all(self) -> None:
        """Everything is free (the worker is gone: nothing it had will be taken)."""
        with self._changed:
            self._blocks.clear()
            self._taken.clear()
            self._tail = self._head
            self._changed.notify_all()

    def close(self) -> None:
        self._view.release()
        self._map.close()
        os.close(self.fd)
