"""The objects a shared repository keeps in its warm tier's bucket, beside the packs.

==============================  ===========================================================
``cluster/config.json``         the repository id and its ``chunkfs.toml`` (written once, by
                                ``init --shared``, with a conditional PUT)
``cluster/log/<N:020d>``        entry *N* of the log: one node's batch of changes, created
                                with ``If-None-Match: *`` so that two nodes never both
                                write entry *N* (``entries.py`` encodes it)
``cluster/nodes/<node>.json``   a member's heartbeat: its host, log positions and backlog
==============================  ===========================================================

Everything here is a thin layer over ``Backend.put_new`` (the conditional write), ``put``
and ``get``; what the entries mean is ``publish``'s and ``replay``'s business.
"""

from __future__ import annotations

import json
import secrets

from chunkfs.errors import AlreadyExists, ConfigError, CorruptData, NotFound
from chunkfs.store.backends.base import Backend

PREFIX = "cluster/"
CONFIG = PREFIX + "config.json"
LOG = PREFIX + "log/"
NODES = PREFIX + "nodes/"
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

    # -- members ----------------------------------------------------------------------------

    def heartbeat(self, node: str, doc: dict) -> None:
        self.backend.put(f"{NODES}{node}.json", json.dumps(doc).encode(), standard=True)

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
