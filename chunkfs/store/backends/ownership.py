"""Which repository an object belongs to: nothing is deleted that is not provably ours.

Two repositories on one S3 prefix used to be possible (``init`` did not look), and the
second one's gc then took the first one's packs for orphans and deleted them. Now:

* **Every location is claimed.** ``init`` writes ``chunkfs-repository.json`` (the
  repository id, when) to each tier location and refuses a location that already holds
  one — or holds packs or metadata backups without one (a repository made before
  markers). Every backend a repository deletes from has a ``LocationGuard``
  (``Backend.guard``): its first delete reads the marker, claims a location that has
  none, and refuses (``Conflict``) a location that names another repository — whatever
  the operation (gc, tier moves, repacks, backups pruned, replicas reclaimed).
* **Every new object names its repository.** A pack id begins with the first
  ``TAG_LEN`` bytes of the repository id (``new_pack_id``), so a pack object's name
  says whose it is; metadata backups carry the tag in their names. An object that the
  index does not know (an orphan) is deleted only when its name carries our tag
  (``owns``): older packs without one are never taken for orphans.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading

from chunkfs import clock
from chunkfs.errors import AlreadyExists, Conflict, NotFound
from chunkfs.store.backends.base import Backend
from chunkfs.types import PACK_ID_LEN, PackId

log = logging.getLogger(__name__)

MARKER = "chunkfs-repository.json"
TAG_LEN = 6
"""Bytes of the repository id at the start of every pack id (the other 10 are random)."""


def new_pack_id(repo_id: bytes) -> PackId:
    return bytes(repo_id[:TAG_LEN]) + secrets.token_bytes(PACK_ID_LEN - TAG_LEN)


def tag(repo_id: bytes) -> str:
    """The repository's tag as object names carry it (hex)."""
    return bytes(repo_id[:TAG_LEN]).hex()


def owns(repo_id: bytes, pack: PackId) -> bool:
    """Whether a pack id was made by the repository ``repo_id`` (``new_pack_id``)."""
    return bytes(pack[:TAG_LEN]) == bytes(repo_id[:TAG_LEN])


def owner(backend: Backend) -> dict | None:
    """The marker of a location (``{"repo_id": hex, "created_ns": …}``), or None when it has none."""
    try:
        doc = json.loads(backend.get(MARKER))
    except NotFound:
        return None
    except ValueError:
        return {"repo_id": "?", "created_ns": 0}  # unreadable: someone else's, to be safe
    return doc if isinstance(doc, dict) else {"repo_id": "?", "created_ns": 0}


def check_unclaimed(backend: Backend) -> None:
    """Raise ``AlreadyExists`` if a location holds a repository already (``init``)."""
    found = owner(backend)
    held = found is not None or next(iter(backend.list("packs/")), None) or next(iter(backend.list("meta/")), None)
    if held:
        who = f"chunkfs repository {found['repo_id']}" if found else "packs or metadata backups of a chunkfs repository"
        raise AlreadyExists(
            f"{backend.url}: already holds {who}; a location belongs to one repository. To restore that "
            f"repository use `chunkfs recover --from {backend.url} NEWREPO`; for a new one choose another "
            "bucket or prefix"
        )


def claim(backend: Backend, repo_id: bytes) -> None:
    doc = {"repo_id": bytes(repo_id).hex(), "created_ns": clock.now_ns()}
    backend.put(MARKER, json.dumps(doc).encode(), standard=True)


class LocationGuard:
    """``Backend.guard`` of a repository's location: the first delete there checks the marker,
    claims a location that has none, and refuses one that names another repository."""

    def __init__(self, backend: Backend, repo_id: bytes) -> None:
        self.backend = backend
        self.repo_id = bytes(repo_id)
        self._checked = False
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            if self._checked:
                return
            found = owner(self.backend)
            if found is None:
                claim(self.backend, self.repo_id)
                log.info("%s: claimed for repository %s (it had no marker)", self.backend.url, self.repo_id.hex())
            elif found.get("repo_id") != self.repo_id.hex():
                raise Conflict(
                    f"{self.backend.url}: belongs to chunkfs repository {found.get('repo_id')}, not to this one "
                    f"({self.repo_id.hex()}); nothing is deleted there. Point the tier at this repository's "
                    "own location in chunkfs.toml"
                )
            self._checked = True


def guard(backend: Backend, repo_id: bytes | None) -> Backend:
    """Set ``backend``'s guard for the repository ``repo_id`` (none without an id: ``init``'s checks)."""
    if repo_id:
        backend.guard = LocationGuard(backend, repo_id)
    return backend
