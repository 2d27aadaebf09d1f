"""This node's part in a shared repository: its identity, the sync thread, its status.

A repository is shared when its index holds ``meta/cluster`` (keys.py, "Cluster"): then
every process that writes it journals its namespace changes (``Namespace.journal``), and
the process that holds the repository (the mount daemon, or ``chunkfs sync``) runs the
sync thread: every ``POLL`` seconds it publishes what is ready (``publish.py``) and
applies what other nodes published (``replay.py``), and every ``HEARTBEAT`` seconds it
writes this node's heartbeat for ``chunkfs status`` on any node. When the store is down,
the thread logs it once, says so in ``status`` and retries with backoff; writes go on
locally meanwhile.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from chunkfs import clock
from chunkfs.background import BackgroundThread
from chunkfs.cluster import entries, maintenance
from chunkfs.cluster.log import SharedLog
from chunkfs.cluster.publish import Publisher
from chunkfs.cluster.replay import Replayer
from chunkfs.errors import BackendUnavailable, ChunkfsError
from chunkfs.namespace.tree import Namespace
from chunkfs.store.tiering.tiers import Tiers
from chunkfs.types import Extent, Tier

log = logging.getLogger(__name__)

POLL = 1.0
"""Seconds between two rounds of publishing and applying (the visibility lag's main part)."""
HEARTBEAT = 5.0
WAIT_POLL = 0.1
"""Seconds between looks at the journal while an fsync waits for its publish."""
MAX_BACKOFF = 30.0
NO_COLD = (
    "a shared repository has no cold tier yet: tier moves to it are not coordinated between nodes "
    "(docs/multinode.md, 'What is not built')"
)


def new_node_id() -> str:
    return secrets.token_hex(8)


def record(node: str, url: str, *, origin: bool) -> dict:
    """The ``meta/cluster`` record of a node that creates (``origin``) or joins a shared repository."""
    return {"node": node, "url": url, "origin": origin, "host": socket.gethostname(), "joined_ns": clock.now_ns()}


@dataclass
class ClusterStatus:
    node: str
    url: str
    applied: int
    pending_changes: int
    oldest_pending_s: float
    waiting: str
    error: str | None
    retiring_packs: int  # re-encoded packs kept on warm until every member relocated (maintenance.py)
    members: dict[str, dict] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(vars(self))


class Cluster(BackgroundThread):
    """Publishing and applying for one open repository that is shared (in a mount, by the sync
    thread: a round every ``POLL`` seconds, or at once when woken)."""

    thread_name = "chunkfs-cluster"

    def __init__(
        self,
        doc: dict,
        tiers: Tiers,
        ns: Namespace,
        wake_uploader: Callable[[], None],
        sidecar: Callable[[bytes, list[Extent]], bytes | None],
    ) -> None:
        super().__init__()
        self.node = doc["node"]
        self.url = doc["url"]
        self.origin = bool(doc.get("origin"))
        self.tiers = tiers
        self.index = tiers.index
        self.shared = SharedLog(tiers.backend(Tier.WARM))
        self.replayer = Replayer(tiers, ns, self.shared, self.node, sidecar)
        self.publisher = Publisher(self.index, self.shared, self.node, self.replayer, wake_uploader)
        self.error: str | None = None
        self._lock = threading.Lock()  # one round at a time (the thread, `chunkfs sync`)

    def sync(self) -> tuple[int, int]:
        """One round: publish what is ready, apply what others published; (changes sent, position)."""
        with self._lock:
            return self.publisher.publish()

    def wait_published(self, since_ns: int, timeout: float) -> None:
        """Return once every change journaled up to ``since_ns`` is in the shared log (the mount's
        ``fsync`` with ``cluster.publish_on_fsync``); ``BackendUnavailable`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            with self.index.read() as t:
                oldest = t.outbox(1)
            if not oldest or oldest[0][1] > since_ns:
                return
            if time.monotonic() > deadline:
                why = self.error or self.publisher.waiting or "the publisher is behind"
                raise BackendUnavailable(
                    f"{self.url}: a change is not in the shared log after {timeout:.0f}s ({why}); it is "
                    "durable on this node and is published once the store can be reached"
                )
            self.wake()  # a round now: someone waits for a publish
            time.sleep(WAIT_POLL)

    def publish_maintenance(self, kind: str, body: dict) -> int:
        """Append a gc or sweep entry (``maintenance.py``) at the first free position of the log;
        returns it. The node's maintainer applies it in log order like any entry."""
        data = entries.encode(entries.Entry(self.node, clock.now_ns(), (0, -1), [], kind=kind, body=body))
        with self.index.read() as t:
            position = t.applied_get() + 1
        while not self.shared.append(position, data):
            position += 1
        return position

    def pending(self) -> tuple[int, float]:
        """(changes not published yet, age of the oldest in seconds)."""
        with self.index.read() as t:
            count = t.outbox_count()
            oldest = t.outbox(1)
        age = (clock.now_ns() - oldest[0][1]) / 1e9 if oldest else 0.0
        return count, max(0.0, age)

    def beat(self) -> None:
        """The heartbeat, then the warm objects of re-encoded packs every member has relocated
        from deleted (cluster/maintenance.py, ``delete_retired``)."""
        self.heartbeat()
        maintenance.delete_retired(self.tiers, self.shared.members)

    def heartbeat(self) -> None:
        count, age = self.pending()
        with self.index.read() as t:
            applied = t.applied_get()
            gc = maintenance.gc_state(t)
        self.shared.heartbeat(
            self.node,
            {"host": socket.gethostname(), "origin": self.origin, "time_ns": clock.now_ns(), "applied": applied,
             "pending_changes": count, "oldest_pending_s": round(age, 1), "waiting": self.publisher.waiting,
             "gc": gc},
        )  # fmt: skip

    def status(self, *, members: bool = True) -> ClusterStatus:
        count, age = self.pending()
        with self.index.read() as t:
            applied = t.applied_get()
            error = t.cluster_error()
            retiring = len(t.retiring())
        found = {}
        if members:
            try:
                found = self.shared.members()
            except ChunkfsError as e:
                found = {"?": {"error": str(e)}}
        # what holds the oldest change back: known to the process that publishes (the mount's
        # daemon says it in its heartbeat)
        waiting = self.publisher.waiting or found.get(self.node, {}).get("waiting", "")
        return ClusterStatus(
            self.node, self.url, applied, count, round(age, 1), waiting, error[1] if error else None, retiring, found
        )

    # -- the sync thread -------------------------------------------------------------------

    def _loop(self) -> None:
        delay, next_beat = POLL, 0.0
        while self.pause(delay):
            try:
                self.sync()
                if time.monotonic() >= next_beat:
                    self.beat()
                    next_beat = time.monotonic() + HEARTBEAT
                if self.error is not None:
                    log.warning("shared log at %s reachable again", self.url)
                    self._record(None)
                delay = POLL
            except ChunkfsError as e:
                if self.error is None:
                    log.warning("shared log at %s: %s; changes stay local and are published later", self.url, e)
                    self._record(str(e))
                delay = min(MAX_BACKOFF, 2 * delay)
            except Exception as e:  # a bug: keep running and say so
                log.exception("shared log: unexpected error")
                self._record(f"unexpected error: {e!r}")
                delay = min(MAX_BACKOFF, 2 * delay)

    def _record(self, error: str | None) -> None:
        """Note (or clear) the failure for ``chunkfs status``, which runs in another process."""
        self.error = error
        try:
            with self.index.write() as t:
                t.cluster_error_put(clock.now_ns(), error)
        except ChunkfsError as e:
            log.warning("cannot record the shared log's state for `chunkfs status`: %s", e)
