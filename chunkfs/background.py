"""The shape every background thread of a mount shares (the uploader, the replicator, the
metadata backups, the shared log's sync, the tier mover): one daemon thread, started at most
once, woken early by ``wake`` (work arrived, someone waits), stopped at unmount with a bounded
wait, at the lowest CPU priority where it asks for it (``low_priority``).

What each one does in its loop, and how it backs off after errors, stays its own; this only
spares each of them the same start/stop/wake bookkeeping (and its subtle parts: a stop
wakes a sleeping loop, a second start is a no-op, a stop that times out says so)."""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

LOWEST_PRIORITY = 19
"""The nice value of a ``low_priority`` thread: it gets a CPU only when nothing else wants one."""


class BackgroundThread:
    """Subclasses set ``thread_name`` and implement ``_loop``, which runs until ``stopping``."""

    thread_name = "chunkfs-background"
    low_priority = False
    """Whether the thread runs at the lowest CPU priority (work that must never slow a writer)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run the next round now instead of after the current pause."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> bool | None:
        """Stop the thread, waiting at most ``timeout``: None when it was not running, else
        whether it ended in time."""
        thread, self._thread = self._thread, None
        if thread is None:
            return None
        self._stop.set()
        self._wake.set()
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` or until woken; False once the thread is being stopped."""
        self._wake.wait(seconds)
        self._wake.clear()
        return not self._stop.is_set()

    def _run(self) -> None:
        if self.low_priority:
            _lower_priority()
        self._loop()

    def _loop(self) -> None:
        raise NotImplementedError


def _lower_priority() -> None:
    """Give the calling thread the lowest CPU priority (on Linux a nice value is per thread; it
    cannot be raised again without privileges, hence only for threads that stay low)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
    except OSError as e:  # not Linux, or a sandbox that forbids it: the work still gets done
        log.info("cannot lower the priority of thread %s: %s", threading.current_thread().name, e)
