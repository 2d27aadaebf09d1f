"""An engine worker whose daemon is gone (chunkfs/writers/worker.py): it returns to seal its
packs and exit, however it finds out — reading the next message, or sending an answer to a
daemon killed -9 while the request was in flight."""

from __future__ import annotations

import logging
import socket
from multiprocessing.connection import Connection

from chunkfs.writers.worker import serve


def pair() -> tuple[Connection, Connection]:
    a, b = socket.socketpair()
    return Connection(a.detach()), Connection(b.detach())


def test_a_closed_socket_ends_the_worker():
    daemon, worker = pair()
    daemon.close()
    serve(None, worker, None)  # returns: nothing to answer


def test_a_daemon_gone_while_its_request_is_answered_ends_the_worker_quietly(caplog):
    caplog.set_level(logging.INFO, "chunkfs.writers.worker")
    daemon, worker = pair()
    daemon.send(("commit", 1, 7, True))  # a request: the worker must answer it (file 7 is unknown: an error)
    daemon.close()  # the daemon dies before the answer
    serve(None, worker, None)  # once raised BrokenPipeError, a traceback in the mount log
    assert "the mount daemon went away" in caplog.text
