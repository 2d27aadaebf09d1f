"""An engine worker process: it chunks, hashes, compresses and stores what a mount hands it.

Started by the mount daemon (``pool.py``) as ``python -m chunkfs.writers.worker``, with
a socket and the hand-off ring (``ring.py``) as inherited file descriptors. It opens the
repository as a ``shared`` writer (repo.py: packs of its own, its own gc lease, answers
gc's seal requests) and serves one message at a time, in the order the daemon sent
them — so each file sees its writes, truncates and commits exactly in the order the
daemon took them, as the in-process ``FileContent`` would.

Messages (tuples; the first item names the operation):

==============================================  =============================================
daemon → worker                                  worker → daemon
==============================================  =============================================
``open fid extents group``                       —
``write fid offset pos n`` (bytes in the ring)   ``freed pos`` as soon as they are copied out
``truncate fid size``                            —
``read req fid offset size``                     ``reply req bytes``
``commit req fid final``                         ``reply req (extents, size, digest)``
``end_window fid`` / ``close fid`` / ``stop``    —
==============================================  =============================================

A request that fails answers ``error req kind message``; a write or truncate that fails
(no space left, a broken pack) sends ``failed fid kind message`` and every later
operation of that file is skipped: the daemon poisons the file (openfiles.py) and its
last committed content stays. When the daemon goes away (its socket closes) the worker
seals its open packs and exits; nothing it held was committed, and nothing committed
depended on it.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
from multiprocessing.connection import Connection
from pathlib import Path

from chunkfs.engine.file import FileContent
from chunkfs.errors import ChunkfsError
from chunkfs.repo import Repository
from chunkfs.writers.ring import Ring

log = logging.getLogger("chunkfs.writers.worker")


def encode_error(e: BaseException) -> tuple[str, str]:
    """(class name, message) of an error, to rebuild on the other side (``errors.by_name``)."""
    if isinstance(e, ChunkfsError):
        return type(e).__name__, str(e)
    return "ChunkfsError", f"internal error in an engine worker: {type(e).__name__}: {e}"


class _File:
    __slots__ = ("content", "failed")

    def __init__(self, content: FileContent) -> None:
        self.content = content
        self.failed = False


def serve(repo: Repository, conn: Connection, ring: Ring) -> None:
    """Answer the daemon's messages until it says stop or goes away (its socket closes, even
    while an answer is being sent: a daemon killed -9 mid-request)."""
    files: dict[int, _File] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if not _handle(repo, conn, ring, files, msg):
                return
        except (BrokenPipeError, ConnectionResetError):
            log.info("the mount daemon went away: sealing this worker's packs")
            return


def _handle(repo: Repository, conn: Connection, ring: Ring, files: dict[int, _File], msg: tuple) -> bool:
    """Carry out one message; False once told to stop."""
    op = msg[0]
    if op == "stop":
        return False
    if op == "write":
        _, fid, offset, pos, n = msg
        data = ring.take(pos, n)
        conn.send(("freed", pos))
        _apply(conn, files, fid, "write", offset, data)
    elif op == "open":
        _, fid, extents, group = msg
        files[fid] = _File(FileContent(repo.chunks, extents, group, repo.settings.chunking, repo.spool_path))
    elif op == "truncate":
        _, fid, size = msg
        _apply(conn, files, fid, "truncate", size)
    elif op in ("read", "commit"):
        _answer(conn, files, msg)
    elif op == "end_window":
        f = files.get(msg[1])
        if f is not None:
            repo.chunks.end_window(f.content)
    elif op == "close":
        f = files.pop(msg[1], None)
        if f is not None:
            f.content.close()
    return True


def _apply(conn: Connection, files: dict[int, _File], fid: int, method: str, *args) -> None:
    """A change the daemon does not wait for: a failure is reported once, later ones skipped."""
    f = files.get(fid)
    if f is None or f.failed:
        return
    try:
        getattr(f.content, method)(*args)
    except ChunkfsError as e:
        f.failed = True
        conn.send(("failed", fid, *encode_error(e)))
    except Exception as e:  # a bug: the daemon must still poison the file, not wait for it
        log.exception("engine worker: %s of file %d", method, fid)
        f.failed = True
        conn.send(("failed", fid, *encode_error(e)))


def _answer(conn: Connection, files: dict[int, _File], msg: tuple) -> None:
    op, req, fid = msg[:3]
    f = files.get(fid)
    try:
        if f is None or f.failed:
            raise ChunkfsError(f"file {fid}: gone from its engine worker after an earlier failure")
        if op == "read":
            _, _, _, offset, size = msg
            value = f.content.read(offset, size)
        else:
            final = msg[3]
            extents = f.content.finish() if final else f.content.commit()
            value = (extents, f.content.size, f.content.digest())
    except Exception as e:  # every request gets an answer
        if not isinstance(e, ChunkfsError):
            log.exception("engine worker: %s of file %d", op, fid)
        if f is not None and op == "commit":
            f.failed = True  # a commit that failed half-way leaves nothing trustworthy behind
        conn.send(("error", req, *encode_error(e)))
        return
    conn.send(("reply", req, value))


def main(argv: list[str]) -> int:
    path, sock_fd, ring_fd, ring_size, number = argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is the daemon's to handle: it stops us in order
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)  # a stuck worker's stacks
    logging.basicConfig(level=logging.INFO, format=f"chunkfs-writer-{number}: %(levelname)s: %(message)s")
    conn = Connection(int(sock_fd))
    ring = Ring(int(ring_size), fd=int(ring_fd))
    try:
        repo = Repository(Path(path), shared=True)
    except ChunkfsError as e:
        conn.send(("error", None, *encode_error(e)))
        return 1
    try:
        repo.tune_allocator()
        repo.start_background()
        conn.send(("ready", None))
        serve(repo, conn, ring)
    finally:
        repo.close()
        ring.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
