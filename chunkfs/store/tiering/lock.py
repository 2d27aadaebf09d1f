"""The tier lock: one tier operation at a time, in this process and across processes.

Every operation that creates or deletes a pack object on any tier holds it
(tiers.py states the protocol). The first acquisition in a process runs
``on_acquire`` — ``Tiers`` finishes or undoes what a killed process left then.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

NEW, OLD = 0, 1
"""Kinds of ``moves`` notes (keys.py): an object being created (undone if the index does not
place it there), or one to delete (finished if the index no longer places it there)."""


class TierLock:
    """Mutual exclusion of tier operations: a thread lock inside the process, flock across processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd = -1
        self.on_acquire: Callable[[], None] | None = None

    @contextlib.contextmanager
    def hold(self, *, blocking: bool = True) -> Iterator[bool]:
        """Hold the lock for the block; yields False (and holds nothing) if not ``blocking`` and busy."""
        if not self._thread_lock.acquire(blocking=blocking):
            yield False
            return
        try:
            if self._depth == 0:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    os.close(fd)
                    yield False
                    return
                self._fd = fd
            self._depth += 1
            try:
                if self._depth == 1 and self.on_acquire is not None:
                    self.on_acquire()
                yield True
            finally:
                self._depth -= 1
                if self._depth == 0:
                    os.close(self._fd)  # releases the flock
                    self._fd = -1
        finally:
            self._thread_lock.release()
