"""The mount daemon's side of its engine worker processes.

A file opened for writing gets a ``RemoteContent`` (openfiles.py): the same calls as an
in-process ``FileContent`` — write, truncate, read, commit, finish, digest — but the
content lives in one of the worker processes (worker.py). A write costs the daemon one
copy into that worker's hand-off ring (ring.py) and one small message; chunking,
hashing, compression and the pack append run in the worker, on another core, and the
files of one mount spread over all the workers (each new file goes to the one with the
fewest open files). Everything that needs an answer — a read of the file, a commit
(flush, fsync, release) — is a request the calling thread waits for; the worker answers
it after every message sent before it, so it sees every write taken before.

The caller serialises the calls for one file (openfiles.py holds its lock), which keeps
that file's messages in order; messages of different files interleave freely. A worker
that dies fails every file it held — their writes since their last commit are lost, and
their next write or close says so (EIO) — and the next file opened gets a new worker.
"""

from __future__ import annotations

import itertools
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

from chunkfs import errors
from chunkfs.engine.file import check_size
from chunkfs.errors import ChunkfsError
from chunkfs.types import Extent
from chunkfs.writers.ring import Ring

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0
"""Seconds a new worker may take to open the repository and report ready."""

MIN_RING = 4 << 20
"""The smallest hand-off ring of one worker: room for a few 1 MiB write requests."""

STOP_TIMEOUT = 60.0
"""Seconds a worker may take to seal its packs when the mount stops."""


class _Reply:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value = None
        self.error: ChunkfsError | None = None


class _Worker:
    """One worker process: its ring, its socket, the thread that reads its answers."""

    def __init__(self, number: int, repo_path: Path, handoff: int) -> None:
        self.number = number
        self.ring = Ring(handoff)
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chunkfs.writers.worker", str(repo_path), str(theirs.fileno()),
                 str(self.ring.fd), str(handoff), str(number)],
                pass_fds=(theirs.fileno(), self.ring.fd), stdin=subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.contents: dict[int, RemoteContent] = {}
        self.dead: ChunkfsError | None = None
        self._replies: dict[int, _Reply] = {}
        self._requests = itertools.count(1)
        self._send_lock = threading.Lock()
        self._ready = _Reply()
        self._reader = threading.Thread(target=self._read, name=f"chunkfs-writer-{number}", daemon=True)
        self._reader.start()

    def wait_ready(self) -> None:
        if not self._ready.done.wait(START_TIMEOUT):
            self.proc.kill()
            raise ChunkfsError(f"engine worker {self.number}: not ready after {START_TIMEOUT:.0f} s")
        if self._ready.error is not None:
            raise self._ready.error

    def _read(self) -> None:
        """Dispatch the worker's messages until its socket closes."""
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                break
            kind = msg[0]
            if kind == "freed":
                self.ring.free(msg[1])
            elif kind in ("reply", "error"):
                reply = self._ready if msg[1] is None else self._replies.pop(msg[1], None)
                if reply is not None:
                    if kind == "reply":
                        reply.value = msg[2]
                    else:
                        reply.error = errors.by_name(msg[2], msg[3])
                    reply.done.set()
            elif kind == "ready":
                self._ready.done.set()
            elif kind == "failed":
                content = self.contents.get(msg[1])
                if content is not None:
                    content.error = errors.by_name(msg[2], msg[3])
        self._died()

    def _died(self) -> None:
        status = self.proc.poll()
        self.dead = ChunkfsError(
            f"engine worker {self.number} (pid {self.proc.pid}) exited"
            + (f" with status {status}" if status is not None else "")
            + "; what was written since the file's last fsync or close is lost, write it again"
        )
        for reply in [self._ready, *self._replies.values()]:
            reply.error = reply.error or self.dead
            reply.done.set()
        self._replies.clear()
        for content in list(self.contents.values()):
            content.error = content.error or self.dead
        self.ring.free_all()  # wakes writers waiting for room: they see ``dead``

    def send(self, msg: tuple) -> None:
        with self._send_lock:
            if self.dead is not None:
                raise self.dead
            try:
                self.conn.send(msg)
            except OSError:
                pass
            else:
                return
        # Its socket is closed: it is dying. Make sure, and let the reader fail what it held.
        self.proc.kill()
        self._reader.join(10)
        raise self.dead or ChunkfsError(f"engine worker {self.number}: gone")

    def call(self, op: str, *args):
        """Send request ``op`` and wait for its answer."""
        reply = _Reply()
        req = next(self._requests)
        self._replies[req] = reply
        try:
            self.send((op, req, *args))
        except ChunkfsError:
            self._replies.pop(req, None)
            raise
        reply.done.wait()
        if reply.error is not None:
            raise reply.error
        return reply.value

    def stop(self) -> None:
        """Let it seal its packs and exit; kill it if it takes too long."""
        try:
            self.send(("stop",))
        except ChunkfsError:
            pass
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.error("engine worker %d did not stop in %.0f s; killing it", self.number, STOP_TIMEOUT)
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        self.conn.close()
        self.ring.close()


class RemoteContent:
    """A file's content held by a worker process (the interface of ``FileContent`` that
    openfiles.py and ``Repository.commit_file`` use)."""

    def __init__(self, worker: _Worker, fid: int, size: int) -> None:
        self.worker = worker
        self.fid = fid
        self._size = size
        self._digest: bytes | None = None
        self.modified = False
        self.error: ChunkfsError | None = None  # set by the worker's reader when a write failed there

    @property
    def size(self) -> int:
        return self._size

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if self.worker.dead is not None:
            raise self.worker.dead

    def write(self, offset: int, data, *, wait: bool = True) -> bool:
        """Hand ``data`` to the worker; False (nothing done) if the ring is full and not ``wait``."""
        self._check()
        if not data:
            return True
        check_size(offset + len(data))
        ring = self.worker.ring
        view = memoryview(data)
        step = ring.size
        if len(view) > step and not wait:
            return False
        for at in range(0, len(view), step):
            piece = view[at : at + step]
            pos = ring.reserve(len(piece), wait=wait, give_up=lambda: self.worker.dead is not None)
            if pos is None:
                self._check()
                return False
            ring.put(pos, piece)
            try:
                self.worker.send(("write", self.fid, offset + at, pos, len(piece)))
            except ChunkfsError:
                ring.free(pos)
                raise
        self._size = max(self._size, offset + len(view))
        self.modified = True
        return True

    def truncate(self, size: int) -> None:
        self._check()
        check_size(size)
        if size == self._size:
            return
        self.worker.send(("truncate", self.fid, size))
        self._size = size
        self.modified = True

    def read(self, offset: int, size: int) -> bytes:
        self._check()
        if offset >= self._size:
            return b""
        return self.worker.call("read", self.fid, offset, size)

    def _commit(self, final: bool) -> list[Extent]:
        self._check()
        extents, size, digest = self.worker.call("commit", self.fid, final)
        self._size, self._digest = size, digest
        self.modified = False
        return extents

    def commit(self) -> list[Extent]:
        """Durable, the stream untouched (fsync): as ``FileContent.commit``."""
        return self._commit(False)

    def finish(self) -> list[Extent]:
        """Durable after the writer is done (close): as ``FileContent.finish``."""
        return self._commit(True)

    def digest(self) -> bytes | None:
        """The whole-file BLAKE3 the last commit computed."""
        return self._digest

    def end_window(self) -> None:
        """The committed content is referenced now: the worker may end its gc write window."""
        if self.worker.dead is None:
            self.worker.send(("end_window", self.fid))

    def close(self) -> None:
        """The file left the open-file table: the worker forgets it."""
        self.worker.contents.pop(self.fid, None)
        if self.worker.dead is None:
            try:
                self.worker.send(("close", self.fid))
            except ChunkfsError as e:
                log.debug("close of file %d: %s", self.fid, e)


class WriterPool:
    """The worker processes of one mount."""

    def __init__(
        self, repo_path: Path, processes: int, handoff: int, on_replaced: Callable[[], object] = lambda: None
    ) -> None:
        """``handoff``: bytes of shared memory for all the workers, split evenly (at least
        ``MIN_RING`` each): the daemon's memory stays bounded whatever the number of CPUs.
        ``on_replaced``: called once a dead worker has been reaped (its packs' ``flock``s are
        free then): the maintainer seals the packs it left open (``PackStore.recover``)."""
        self.repo_path = repo_path
        self.handoff = max(MIN_RING, handoff // max(processes, 1))
        self._on_replaced = on_replaced
        self._fids = itertools.count(1)
        self._lock = threading.Lock()
        self._next = itertools.count(1)
        self._workers = [_Worker(next(self._next), repo_path, self.handoff) for _ in range(processes)]
        try:
            for w in self._workers:
                w.wait_ready()
        except BaseException:
            self.stop()
            raise

    def _pick(self) -> _Worker:
        """The live worker with the fewest open files; a dead one is replaced first."""
        with self._lock:
            for i, w in enumerate(self._workers):
                if w.dead is not None:
                    log.warning("%s; starting a new one", w.dead)
                    w.stop()
                    self._on_replaced()
                    fresh = _Worker(next(self._next), self.repo_path, self.handoff)
                    fresh.wait_ready()
                    self._workers[i] = fresh
            return min(self._workers, key=lambda w: len(w.contents))

    def open(self, extents: list[Extent], group: str, size: int) -> RemoteContent:
        """Hand a file with committed content ``extents`` (of ``size`` bytes) to a worker."""
        try:
            return self._open_on(self._pick(), extents, group, size)
        except ChunkfsError:  # that worker was found dead: the next pick replaces it
            return self._open_on(self._pick(), extents, group, size)

    def _open_on(self, worker: _Worker, extents: list[Extent], group: str, size: int) -> RemoteContent:
        content = RemoteContent(worker, next(self._fids), size)
        worker.contents[content.fid] = content
        try:
            worker.send(("open", content.fid, extents, group))
        except ChunkfsError:
            worker.contents.pop(content.fid, None)
            raise
        return content

    def stop(self) -> None:
        """Stop every worker (after the open files were committed: unmount)."""
        for w in self._workers:
            w.stop()
        self._workers = []
