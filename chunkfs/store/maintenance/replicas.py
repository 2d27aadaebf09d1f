"""Replication: verified copies of sealed packs on a second failure domain.

``replication.replicas`` in chunkfs.toml lists locations (``s3://bucket/prefix``
on another endpoint or bucket, or a directory such as an NFS mount). Every
sealed pack that lives on the warm tier (its home, or a verified write-back
copy there) — and with ``replication.cold`` every cold pack; with no warm tier
configured, every sealed hot pack — is copied to each replica under the same
object name (``packs/ab/<id>.pack``), so a chunk's offset is the same there.

Copying a pack (``replicate``): read it from where it lives into a local file,
check every chunk record against its hash (damage is never replicated), upload,
verify the replica's size and BLAKE3, then record the copy in ``replicas``
(keys.py). Killed at any point, the pack simply has no entry yet and is copied
again; an object without an entry is overwritten.

``Replicator`` runs this in a background thread of the mount
(``Repository.start_background``); ``lag`` gives what is not yet replicated
(``chunkfs status``). Reads fall back to replicas (``fetch``): the pack store
asks for a chunk's stored bytes when its home tier fails or returns damage,
and ``chunkfs fsck --repair`` takes lost chunks from them.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chunkfs import clock, config
from chunkfs.background import BackgroundThread
from chunkfs.errors import BackendUnavailable, ChunkfsError, ConfigError, CorruptData, NotFound
from chunkfs.index import Index, keys
from chunkfs.store.backends import ownership
from chunkfs.store.backends.base import Backend
from chunkfs.store.backends.local import LocalBackend
from chunkfs.store.backends.url import open_backend
from chunkfs.store.pack.files import pack_id_from_name, pack_name, read_entries
from chunkfs.store.tiering.tiers import Tiers
from chunkfs.types import ChunkId, ChunkLocation, PackId, PackInfo, PackState, Tier

log = logging.getLogger(__name__)

Verifier = Callable[[ChunkId, bytes, int, int], "bytes | None"]
"""(chunk, stored bytes, raw length, flags) → the raw bytes if they decode to the chunk, else None
(set by the repository: the engine's codec; the store does not hash or decompress itself)."""


@dataclass
class Lag:
    """What is not replicated yet, over all replicas."""

    packs: int = 0
    bytes: int = 0
    oldest_age_s: float = 0.0  # age of the oldest sealed pack still missing on a replica
    replicated_packs: int = 0
    error: str | None = None


class Replicas:
    """The replica locations of a repository, copying packs to them and reading from them."""

    def __init__(self, repo_path: Path, settings: config.Settings, index: Index, tiers: Tiers) -> None:
        self.repo_path = repo_path
        self.settings = settings.replication
        self.index = index
        self.tiers = tiers
        self.urls: tuple[str, ...] = tuple(self.settings.replicas)
        tier_settings = settings.tiers
        if self.settings.endpoint_url:
            tier_settings = dataclasses.replace(tier_settings, endpoint_url=self.settings.endpoint_url)
        self._tier_settings = tier_settings
        self._backends: dict[str, Backend] = {}
        self._lock = threading.Lock()
        self.verifier: Verifier | None = None
        self.last_error: str | None = None
        self.served = 0  # reads served from a replica by this process

    @property
    def configured(self) -> bool:
        return bool(self.urls)

    def backend(self, url: str) -> Backend:
        with self._lock:
            b = self._backends.get(url)
            if b is None:
                b = open_backend(url, self._tier_settings, "", self.repo_path)
                self._backends[url] = ownership.guard(b, self.index.repo_id if self.index else None)
            return b

    def close(self) -> None:
        for b in self._backends.values():
            if isinstance(b, LocalBackend):
                b.close()

    # -- what to replicate ----------------------------------------------------------------

    def _wanted(self, info: PackInfo, warm_copy: bool) -> bool:
        if info.state != PackState.SEALED:
            return False
        if info.tier == Tier.WARM or warm_copy:
            return True
        if info.tier == Tier.COLD:
            return self.settings.cold
        return info.tier == Tier.HOT and not self.tiers.configured(Tier.WARM)

    def pending(self) -> list[tuple[PackId, PackInfo, str]]:
        """(pack, info, replica url) of every copy still to make, oldest pack first."""
        out = []
        with self.index.read() as t:
            warm_copies = {p for p, tier, _, _ in t.copies() if tier == Tier.WARM}
            have = {(p, rid) for p, rid, _, _, _ in t.replicas()}
            for pack, info in t.packs():
                if not self._wanted(info, pack in warm_copies):
                    continue
                for url in self.urls:
                    if (pack, keys.replica_id(url)) not in have:
                        out.append((pack, info, url))
        out.sort(key=lambda row: (row[1].created_ns, row[0]))
        return out

    def lag(self) -> Lag:
        rows = self.pending()
        now = clock.now_ns()
        lag = Lag(packs=len({p for p, _, _ in rows}), bytes=sum(i.size for _, i, _ in rows), error=self.last_error)
        if rows:
            lag.oldest_age_s = max(0.0, (now - min(i.created_ns for _, i, _ in rows)) / 1e9)
        with self.index.read() as t:
            lag.replicated_packs = len({p for p, *_ in t.replicas()})
        return lag

    # -- copying ---------------------------------------------------------------------------------

    def _source(self, pack: PackId, info: PackInfo) -> Tier:
        """Where to read a pack from: its warm copy if it has one, else its home."""
        if info.tier != Tier.WARM and self.tiers.configured(Tier.WARM):
            with self.index.read() as t:
                if t.copy_get(pack, Tier.WARM) is not None:
                    return Tier.WARM
        return info.tier

    def replicate(self, pack: PackId, info: PackInfo, url: str) -> int:
        """Copy one pack to replica ``url`` with verification; return the bytes copied."""
        name = pack_name(pack)
        src = self.tiers.backend(self._source(pack, info))
        dst = self.backend(url)
        with self.tiers.local_copy(src, name, info.size) as (path, digest):
            self._check_records(LocalBackend(path.parent), path.name, pack)
            dst.put_file(name, path, blake3_digest=digest)
        dst.verify(name, digest, info.size)
        with self.index.write() as t:
            if t.pack_get(pack) is not None:
                t.replica_put(pack, keys.replica_id(url), clock.now_ns(), info.size, digest)
        return info.size

    def _check_records(self, backend: LocalBackend, name: str, pack: PackId) -> None:
        """Every chunk of the pack decodes to its hash (never replicate damage)."""
        entries, sealed = read_entries(backend, name)
        if not sealed:
            raise CorruptData(f"pack {pack.hex()}: no footer; not replicated (run `chunkfs fsck`)")
        if self.verifier is None:
            return
        for e in entries:
            stored = backend.get_range(name, e.offset, e.stored_len)
            if self.verifier(e.chunk, stored, e.raw_len, e.flags) is None:
                raise CorruptData(
                    f"pack {pack.hex()}: chunk {e.chunk.hex()} does not match its hash; not replicated "
                    "(run `chunkfs fsck --repair`)"
                )
        backend.close()

    def run_once(self, stop: threading.Event | None = None) -> int:
        """Make every pending copy (under the tier lock, so no move deletes a source meanwhile);
        return how many. A failing replica is logged and skipped until the next round."""
        done = 0
        failed: set[str] = set()
        for pack, _info, url in self.pending():
            if stop is not None and stop.is_set():
                break
            if url in failed:
                continue
            with self.tiers.lock.hold():
                with self.index.read() as t:
                    info = t.pack_get(pack)
                if info is None:
                    continue
                try:
                    self.replicate(pack, info, url)
                    done += 1
                except (BackendUnavailable, ConfigError, NotFound, CorruptData) as e:
                    if isinstance(e, (BackendUnavailable, ConfigError)):  # the replica itself fails
                        failed.add(url)
                    self.last_error = f"replica {url}: pack {pack.hex()}: {e}"
                    log.warning("replication: %s", self.last_error)
        if not failed and done:
            self.last_error = None
        self._drop_stale()
        return done

    def reclaim(self, *, dry_run: bool = False) -> list[tuple[str, int]]:
        """Delete the replica objects of packs the index no longer has (gc deleted or repacked them),
        and their entries; return (object, size) of each. Under the tier lock, like ``replicate``,
        so an object being copied for a pack that is still indexed is never taken for one."""
        found: list[tuple[str, int]] = []
        with self.tiers.lock.hold():
            with self.index.read() as t:
                indexed = {p for p, _ in t.packs()}
            for url in self.urls:
                try:
                    found += self._reclaim_on(self.backend(url), indexed, dry_run)
                except ChunkfsError as e:  # a replica that is down keeps its leftovers until the next gc
                    log.warning("replica %s: cannot delete copies of deleted packs: %s", url, e)
            if not dry_run:
                self._drop_stale()
        return found

    def _reclaim_on(self, backend: Backend, indexed: set[PackId], dry_run: bool) -> list[tuple[str, int]]:
        found = []
        for name in list(backend.list("packs/")):
            pack = pack_id_from_name(name)
            if pack is None or pack in indexed or not ownership.owns(self.index.repo_id, pack):
                continue  # never an object whose name does not say it is ours (store/backends/ownership.py)
            found.append((f"{backend.url}/{name}", backend.size(name)))
            if not dry_run:
                backend.delete(name)
        return found

    def _drop_stale(self) -> None:
        with self.index.read() as t:
            stale = [(p, rid) for p, rid, *_ in t.replicas() if t.pack_get(p) is None]
        if stale:
            with self.index.write() as t:
                for p, rid in stale:
                    t.replica_delete(p, rid)

    # -- reading ---------------------------------------------------------------------------------

    def fetch(self, chunk: ChunkId, loc: ChunkLocation) -> bytes | None:
        """The verified stored bytes of a chunk from the first replica that has them (None: none)."""
        name = pack_name(loc.pack)
        with self.index.read() as t:
            recorded = set(t.replicas_of(loc.pack))
        ordered = sorted(self.urls, key=lambda u: keys.replica_id(u) not in recorded)
        for url in ordered:
            try:
                data = self.backend(url).get_range(name, loc.offset, loc.stored_len)
            except ChunkfsError as e:
                log.info("replica %s has no good copy of chunk %s: %s", url, chunk.hex(), e)
                continue
            if len(data) == loc.stored_len and (
                self.verifier is None or self.verifier(chunk, data, loc.raw_len, loc.flags) is not None
            ):
                self.served += 1
                return data
            log.warning("replica %s: chunk %s in %s is damaged too", url, chunk.hex(), name)
        return None


class Replicator(BackgroundThread):
    """The background thread that keeps replicas up to date (every ``replication.interval``)."""

    thread_name = "chunkfs-replicator"

    def __init__(self, replicas: Replicas, interval: float) -> None:
        super().__init__()
        self.replicas = replicas
        self.interval = interval

    def start(self) -> None:
        if self.interval:
            super().start()

    def _loop(self) -> None:
        while not self.stopping:
            try:
                self.replicas.run_once(self._stop)
            except ChunkfsError as e:
                log.warning("replication: %s", e)
            except Exception:  # a bug: keep running and say so
                log.exception("replication: unexpected error")
            self.pause(self.interval)
