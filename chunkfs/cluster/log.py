"""The objects a shared repository keeps in its warm tier's bucket, beside the packs.

==============================  ===========================================================
``cluster/config.json``         the repository id and its ``chunkfs.toml`` (written once, by
                                ``init --shared``, with a conditional PUT)
``cluster/log/<N:020d>``        entry *N* of the log: one node's batch of changes, created
                                with ``If-None-Match: *`` so that two nodes never both
                                write entry *N* (``entries.py`` encodes it)
``cluster/nodes/<node>.json``   a member's heartbeat: its host, log positions and backlog
``cluster/log-start.json``      ``{"first": F}``: entries before *F* were deleted (a gc
                                truncates what every member applied and the newest
                                metadata backup a join starts from holds)
``cluster/lease/<G:020d>``      generation *G* of the maintenance lease (one gc or metadata
                                backup at a time across the nodes): taken, renewed and
                                released by creating generation *G+1* with ``If-None-Match: *``
==============================  ===========================================================

The lease needs no ``If-Match``: only one node can create generation *G+1*, and a holder
that finds it taken has lost the lease. It expires ``LEASE_TTL`` seconds after its last
renewal by the holder's clock (nodes keep their clocks in sync, NTP): a node that dies
holding it blocks maintenance that long.

Everything here is a thin layer over ``Backend.put_new`` (the conditional write), ``put``
and ``get``; what the entries mean is ``publish``'s and ``replay``'s business.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import time
from collections.abc import Iterator

from chunkfs import clock
from chunkfs.errors import AlreadyExists, ChunkfsError, ConfigError, Conflict, CorruptData, NotFound
from chunkfs.store.backends.base import Backend

PREFIX = "cluster/"
CONFIG = PREFIX + "config.json"
LOG = PREFIX + "log/"
NODES = PREFIX + "nodes/"
LEASES = PREFIX + "lease/"
LOG_START = PREFIX + "log-start.json"
LEASE_TTL = 60.0
BACKUP = "metadata backup"  # what a metadata backup holds the lease for: others wait for it
TIER_MOVER = "tier mover"  # a node's re-encoding moves (the others then relocate their chunks)
FORMAT = 1


def entry_name(position: int) -> str:
    return f"{LOG}{position:020d}"


class SharedLog:
    """The shared objects of one repository, on its warm tier's backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    # -- the repository's shared configuration ---------------------------------------------

    def probe(self) -> None:
        """Refuse (``ConfigError``) a store whose conditional writes do not work: the second of two
        ``If-None-Match: *`` PUTs of one key must be refused (``rclone serve s3`` accepts both)."""
        name = f"{PREFIX}probe-{secrets.token_hex(8)}"
        try:
            first = self.backend.put_new(name, b"1")
            second = self.backend.put_new(name, b"2")
        finally:
            try:
                self.backend.delete(name)
            except NotFound:
                pass
        if not first or second:
            raise ConfigError(
                f"{self.backend.url}: this S3 store does not enforce conditional writes (If-None-Match); "
                "a shared repository needs them (AWS S3, MinIO and Ceph RGW have them). Use such a store, "
                "or a repository of its own on each node"
            )

    def create(self, repo_id: bytes, settings_toml: str) -> None:
        doc = {"format": FORMAT, "repo_id": bytes(repo_id).hex(), "settings": settings_toml}
        if not self.backend.put_new(CONFIG, json.dumps(doc).encode()):
            raise AlreadyExists(
                f"{self.backend.url}: already holds a shared repository; join it with `chunkfs join REPO "
                f"{self.backend.url}`"
            )

    def config(self) -> dict:
        """The shared configuration; ``NotFound`` when the location holds no shared repository."""
        try:
            raw = self.backend.get(CONFIG)
        except NotFound:
            raise NotFound(
                f"{self.backend.url}: holds no shared repository (no {CONFIG}); create one with "
                "`chunkfs init --shared --warm URL`"
            ) from None
        try:
            doc = json.loads(raw)
            if doc.get("format") != FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, this chunkfs reads format {FORMAT}")
            bytes.fromhex(doc["repo_id"])
            str(doc["settings"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CorruptData(f"{self.backend.url}/{CONFIG}: not a shared repository's configuration ({e})") from None
        return doc

    # -- the log ----------------------------------------------------------------------------

    def append(self, position: int, data: bytes) -> bool:
        """Create entry ``position``; False when another node wrote it first."""
        return self.backend.put_new(entry_name(position), data)

    def read(self, position: int) -> bytes | None:
        """Entry ``position``, or None when nobody has written it yet."""
        try:
            return self.backend.get(entry_name(position))
        except NotFound:
            return None

    def first(self) -> int:
        """The oldest entry still kept (1 until the log is truncated)."""
        try:
            return int(json.loads(self.backend.get(LOG_START))["first"])
        except NotFound:
            return 1
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptData(f"{self.backend.url}/{LOG_START}: unreadable ({e})") from None

    def truncate(self, upto: int) -> int:
        """Delete entries up to ``upto`` (the maintenance lease's holder only); the start is noted
        first, so a reader never takes a deleted entry for the end of the log. Returns how many."""
        first = self.first()
        if upto < first:
            return 0
        self.backend.put(LOG_START, json.dumps({"first": upto + 1}).encode(), standard=True)
        for position in range(first, upto + 1):
            with contextlib.suppress(NotFound):
                self.backend.delete(entry_name(position))
        return upto + 1 - first

    # -- members ----------------------------------------------------------------------------

    def heartbeat(self, node: str, doc: dict) -> None:
        self.backend.put(f"{NODES}{node}.json", json.dumps(doc).encode(), standard=True)

    def forget(self, node: str) -> None:
        """Drop ``node``'s heartbeat (``chunkfs forget-node``; the log entry is the fence)."""
        with contextlib.suppress(NotFound):
            self.backend.delete(f"{NODES}{node}.json")

    def members(self) -> dict[str, dict]:
        """Every node's last heartbeat, by node id (an unreadable one is reported as such)."""
        out = {}
        for name in self.backend.list(NODES):
            node = name[len(NODES) :].removesuffix(".json")
            try:
                out[node] = json.loads(self.backend.get(name))
            except NotFound:
                continue
            except ValueError:
                out[node] = {"error": "unreadable heartbeat"}
        return out

    # -- the maintenance lease -------------------------------------------------------------

    @contextlib.contextmanager
    def lease(self, node: str, what: str, *, wait: bool = True) -> Iterator[Lease]:
        """Hold the cluster's maintenance lease for ``what``; ``Conflict`` when another holds it
        (with ``wait``, after waiting up to ``LEASE_TTL`` for a metadata backup, which takes
        seconds, to end)."""
        deadline = time.monotonic() + LEASE_TTL
        while True:
            generation, holder = self._lease_holder()
            if holder is not None:
                doc, left = holder
                if not wait or doc.get("what") != BACKUP or time.monotonic() > deadline:
                    raise Conflict(
                        f"{self.backend.url}: {doc.get('what')} on node {doc.get('node')} ({doc.get('host')}) holds "
                        f"the cluster's maintenance lease for {left:.0f}s more; wait for it to finish (or, if that "
                        "node died, for the lease to expire)"
                    )
            else:
                held = Lease(self, node, what, generation)
                if held.take():
                    break
            time.sleep(1.0)  # the holder's backup runs, or another node took the lease just now: look again
        try:
            yield held
        finally:
            held.release()

    def _lease_holder(self) -> tuple[int, tuple[dict, float] | None]:
        """(newest generation of the lease, (its record, seconds left) while it is held, else None)."""
        names = sorted(n for n in self.backend.list(LEASES) if n[len(LEASES) :].isdigit())
        if not names:
            return 0, None
        generation = int(names[-1][len(LEASES) :])
        try:
            doc = json.loads(self.backend.get(names[-1]))
            left = (int(doc["expires_ns"]) - clock.now_ns()) / 1e9
            released = bool(doc.get("released"))
        except (NotFound, ValueError, KeyError, TypeError, AttributeError):
            return generation, None  # unreadable: expired
        return generation, None if released or left <= 0 else (doc, left)


class Lease:
    """One holding of the maintenance lease (``SharedLog.lease``)."""

    def __init__(self, shared: SharedLog, node: str, what: str, generation: int) -> None:
        self.shared, self.node, self.what, self.generation = shared, node, what, generation

    def take(self) -> bool:
        """Create the generation after the one found free; False when another node created it first."""
        return self._next(released=False)

    def renew(self, *, released: bool = False) -> None:
        """Extend the lease by ``LEASE_TTL`` (create the next generation); ``Conflict`` when another
        node created it: the lease expired and was taken over."""
        if not self._next(released=released):
            backend = self.shared.backend
            raise Conflict(
                f"{backend.url}: the cluster's maintenance lease was taken by another node (it expired after "
                f"{LEASE_TTL:.0f}s without renewal); {self.what} stops — run it again"
            )

    def _next(self, *, released: bool) -> bool:
        doc = {"node": self.node, "host": socket.gethostname(), "what": self.what, "released": released,
               "expires_ns": clock.now_ns() + int(LEASE_TTL * 1e9)}  # fmt: skip
        backend = self.shared.backend
        if not backend.put_new(f"{LEASES}{self.generation + 1:020d}", json.dumps(doc).encode()):
            return False
        self.generation += 1
        if self.generation > 2:  # the two newest generations are all a reader needs
            with contextlib.suppress(NotFound):
                backend.delete(f"{LEASES}{self.generation - 2:020d}")
        return True

    def release(self) -> None:
        """Give the lease back (when the store cannot be reached, it expires instead)."""
        with contextlib.suppress(ChunkfsError):
            self.renew(released=True)
