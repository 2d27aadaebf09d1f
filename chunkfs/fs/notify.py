"""Telling the kernel to forget what it caches: one thread that sends the invalidations.

The kernel keeps pages, attributes and names of the mount (the writeback cache, entry
and attribute timeouts). When what chunkfs holds changes other than through a request
the kernel made — a write that failed after the kernel had accepted it into its page
cache, a commit by another process — the kernel must be told to drop its copy.

``pyfuse3.invalidate_inode`` and ``invalidate_entry`` block until the kernel has done
it, and the kernel may need answers from this very daemon first (dirty pages are
written back before they are dropped; a directory's lock may be held by a request in
flight): called from a request handler they can deadlock the mount (libfuse's and
pyfuse3's notes say so). So they are queued here and sent from one thread of their own,
after the handler has answered; ``wait`` lets a caller that is not a handler of the
same inode wait until what it queued is done.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading

import pyfuse3

log = logging.getLogger(__name__)

_STOP = object()


class Notifier:
    """A queue of kernel cache invalidations and the thread that sends them."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chunkfs-notify", daemon=True)
        self._thread.start()

    def forget_file(self, ino: int, names: list[tuple[int, bytes]]) -> None:
        """Drop the kernel's pages and attributes of ``ino`` and its entries ``(parent, name)``:
        once its last user closes it the kernel forgets the inode, and the next lookup
        reads its size and content afresh from the index."""
        self._queue.put((ino, names))

    def wait(self, timeout: float = 10.0) -> bool:
        """Block until everything queued so far was sent (False on timeout)."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            if isinstance(item, threading.Event):
                item.set()
                continue
            ino, names = item
            _quietly(pyfuse3.invalidate_inode, ino)
            for parent, name in names:
                _quietly(pyfuse3.invalidate_entry, parent, name)


def _quietly(fn, *args) -> None:
    """Send one invalidation; the kernel not knowing the object is no error (nothing cached)."""
    try:
        fn(*args)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):
            log.warning("cannot invalidate the kernel's cache (%s%r): %s", fn.__name__, args, e)
