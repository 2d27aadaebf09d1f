"""Tiers: which backend holds each tier, and moving sealed packs between them.

A sealed pack has one *home* tier (``PackInfo.tier``) and maybe verified extra
copies (``copies``: a write-back upload, or the warm copy kept when a pack is
brought back to hot). Every operation that creates or deletes a pack object on
any tier — a move here, a write-back upload (uploads.py), a re-encoding repack, gc's sweep
and fsck's repair (maintenance/) — runs under the tier lock (lock.py), so no two of
them interleave, in this process or another.

A **move** (same pack, other tier) is: note the new object in ``moves`` →
copy → verify size and BLAKE3 at the destination → one LMDB transaction
switches the home and notes the old object for deletion → delete the source →
forget the note. A **repack** (maintenance/reencode.py: the live chunks of one
run's packs, re-encoded, into new packs of that run only) is the one pack rewrite
of maintenance/rewrite.py, with new pack ids: the chunk locations switch in the same
transaction as the pack homes.

Killed at any point, the notes say what to do (keys.py ``moves``): whoever
next takes the lock (``resume``) deletes a *new* object the index does not
place there (undo) and an *old* one it no longer places there (finish).
Readers never see a missing pack: the index switches only once the new
object is verified, and the source goes only after the switch; a reader that
looked up the old home just before it finds the pack gone, looks again and
reads the new home (``PackStore.read_stored``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import blake3

from chunkfs import clock, config
from chunkfs.errors import BackendUnavailable, ConfigError, CorruptData, NotFound
from chunkfs.index import Index
from chunkfs.store.backends import ownership
from chunkfs.store.backends.base import ARCHIVE_STORAGE_CLASSES, Backend, os_error
from chunkfs.store.backends.local import LocalBackend
from chunkfs.store.backends.url import backend_for, open_backend
from chunkfs.store.pack.files import pack_name, read_entries
from chunkfs.store.tiering.audit import audit as audit_placement
from chunkfs.store.tiering.lock import NEW, OLD, TierLock
from chunkfs.types import ChunkId, PackId, PackState, Tier, tier_name

log = logging.getLogger(__name__)

COPY_BLOCK = 8 << 20

Transform = Callable[[ChunkId, bytes, int, int, int, ChunkId | None], tuple[bytes, int]]
"""(chunk, stored, raw length, flags, zstd level, base to try a delta against) → (stored, flags): how a
repack re-encodes a chunk."""

DeltaPlan = Callable[[str], dict[ChunkId, ChunkId]]
"""run → {chunk: base}: the deltas a re-encoding of that run tries (namespace/deltas.py)."""


class Tiers:
    """The tiers of one repository: their backends, and moving a pack's home between them."""

    def __init__(self, repo_path: Path, settings: config.Settings, index: Index, hot: LocalBackend) -> None:
        self.repo_path = repo_path
        self.settings = settings.tiers
        self.pack_size = settings.packs.target_size
        self.index = index
        self._backends: dict[Tier, Backend] = {Tier.HOT: ownership.guard(hot, index.repo_id if index else None)}
        self._open_lock = threading.Lock()
        self._reading = threading.Lock()  # local_copy: one hot pack read at a time
        self.lock = TierLock(repo_path / "tiers.lock")
        self.lock.on_acquire = self._resume_locked
        self.readcache = None  # set by the repository: pinned chunks are staged there before leaving hot
        self.transform: Transform | None = None  # set by the repository: the re-encoding (maintenance/reencode.py)
        self.delta_plan: DeltaPlan | None = None  # set by the repository (lifecycle.delta_chain)
        self.shared = False  # set by the repository: other nodes read its warm packs, never rewrite them (multinode.md)
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self._resumed = 0  # operations the last acquisition of the lock finished or undid
        for tier, url in ((Tier.WARM, self.settings.warm), (Tier.COLD, self.settings.cold)):
            if url and "://" in url and urlsplit(url).scheme.lower() not in ("s3", "file"):
                backend_for(url)  # the same one-line ConfigError at open as later at first use

    # -- backends ---------------------------------------------------------------------------

    def url(self, tier: Tier) -> str:
        """The tier's location as configured ('' when it is not)."""
        if tier == Tier.HOT:
            return self._backends[Tier.HOT].url
        return self.settings.warm if tier == Tier.WARM else self.settings.cold

    def configured(self, tier: Tier) -> bool:
        return bool(self.url(tier))

    @property
    def remote(self) -> bool:
        """Whether any tier beyond hot is configured."""
        return self.configured(Tier.WARM) or self.configured(Tier.COLD)

    def archive(self, tier: Tier) -> bool:
        """Whether packs on ``tier`` must be thawed before they can be read: ``cold_archive``, or a
        cold storage class that S3 never serves without a restore (a GET would fail anyway)."""
        return tier == Tier.COLD and (
            self.settings.cold_archive or self.settings.cold_storage_class.upper() in ARCHIVE_STORAGE_CLASSES
        )

    def next_tier(self, tier: Tier) -> Tier | None:
        """Where the policy sends packs from ``tier``: the next configured colder tier."""
        for t in (Tier.WARM, Tier.COLD):
            if t > tier and self.configured(t):
                return t
        return None

    def backend(self, tier: Tier) -> Backend:
        """The backend of ``tier`` (opened at first use: repositories that never leave hot never load boto3)."""
        with self._open_lock:
            b = self._backends.get(tier)
            if b is None:
                url = self.url(tier)
                if not url:
                    raise ConfigError(
                        f"no {tier_name(tier)} tier configured; set tiers.{tier_name(tier)} in chunkfs.toml"
                    )
                storage_class = self.settings.warm_storage_class if tier == Tier.WARM else self.settings.cold_storage_class
                b = open_backend(url, self.settings, storage_class, self.repo_path)
                self._backends[tier] = ownership.guard(b, self.index.repo_id if self.index else None)
            return b

    def check_unclaimed(self) -> None:
        """Refuse (``AlreadyExists``) a warm or cold location that holds a repository already (``init``)."""
        for tier in (Tier.WARM, Tier.COLD):
            if self.configured(tier):
                ownership.check_unclaimed(self.backend(tier))

    def claim(self, repo_id: bytes) -> None:
        """Mark every configured location as the repository ``repo_id``'s (``init``)."""
        for tier in Tier:
            if self.configured(tier):
                ownership.claim(self.backend(tier), repo_id)

    def check_reachable(self) -> None:
        """Raise the backend's one-line error unless every configured remote tier answers."""
        for tier in (Tier.WARM, Tier.COLD):
            if self.configured(tier):
                b = self.backend(tier)
                if isinstance(b, LocalBackend):
                    try:
                        b.root.mkdir(parents=True, exist_ok=True)
                    except OSError as e:
                        raise os_error(e, f"{tier_name(tier)} tier {b.url}") from None
                else:
                    b.exists("packs/.chunkfs-probe")  # missing bucket, bad credentials, dead endpoint

    def close(self) -> None:
        for tier, b in self._backends.items():
            if tier != Tier.HOT and isinstance(b, LocalBackend):
                b.close()

    # -- counters -----------------------------------------------------------------------------

    def count(self, **deltas: int) -> None:
        with self._counts_lock:
            self._counts.update(deltas)

    def counts(self) -> dict[str, int]:
        with self._counts_lock:
            return dict(self._counts)

    # -- recovery -----------------------------------------------------------------------------

    def resume(self) -> int:
        """Finish or undo every tier operation a killed process left; return how many.

        (Taking the lock does it anyway: every operation starts from a clean state.)"""
        with self.lock.hold():
            return self._resumed

    def _resume_locked(self) -> None:
        """Run at every first acquisition of the lock: nothing else is in flight now."""
        with self.index.read() as t:
            notes = list(t.moves())
        done = 0
        for pack, tier, kind, _started in notes:
            with self.index.read() as t:
                info = t.pack_get(pack)
                placed = (info is not None and info.tier == tier) or t.copy_get(pack, tier) is not None
            if not placed:
                try:
                    self.backend(tier).delete(pack_name(pack))
                except ConfigError as e:  # the tier left the config: keep the note
                    log.warning("cannot clean up pack %s on the %s tier: %s", pack.hex(), tier_name(tier), e)
                    continue
                except BackendUnavailable as e:  # keep the note; what runs next meets the same error, if any
                    log.info("cannot clean up pack %s on the %s tier yet: %s", pack.hex(), tier_name(tier), e)
                    continue
            with self.index.write() as t:
                t.move_delete(pack, tier)
            what = "kept" if placed else ("undone" if kind == NEW else "finished")
            log.info("interrupted tier operation on pack %s (%s tier): %s", pack.hex(), tier_name(tier), what)
            done += 1
        self._resumed = done

    # -- copying -----------------------------------------------------------------------------

    def copy_verified(self, pack: PackId, src: Tier, dst: Tier, size: int) -> bytes:
        """Copy a pack object from ``src`` to ``dst``, verify it there; return its BLAKE3."""
        name = pack_name(pack)
        sb, db = self.backend(src), self.backend(dst)
        with self.local_copy(sb, name, size) as (path, digest):
            db.put_file(name, path, blake3_digest=digest)
        db.verify(name, digest, size)
        return digest

    @contextlib.contextmanager
    def local_copy(self, backend: Backend, name: str, size: int) -> Iterator[tuple[Path, bytes]]:
        """A local file with the object's bytes (the object itself on a local tier) and its BLAKE3."""
        if isinstance(backend, LocalBackend):
            path = backend.path(name)
            hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
            try:
                with self._reading:  # concurrent uploads fall out of step: one reads while another sends
                    actual = path.stat().st_size
                    with open(path, "rb") as f:
                        while block := f.read(COPY_BLOCK):
                            hasher.update(block)
            except OSError as e:
                raise os_error(e, f"{backend.url}/{name}") from None
            if actual != size:
                raise CorruptData(f"{backend.url}/{name}: {actual} bytes, the index says {size}; run `chunkfs fsck`")
            yield path, hasher.digest()
            return
        tmpdir = self.repo_path / "tmp"
        tmpdir.mkdir(exist_ok=True)
        path = tmpdir / f"{name.rsplit('/', 1)[-1]}.{os.getpid()}.{threading.get_ident()}"
        hasher = blake3.blake3()
        try:
            with open(path, "wb") as f:
                for offset in range(0, size, COPY_BLOCK):
                    block = backend.get_range(name, offset, min(COPY_BLOCK, size - offset))
                    hasher.update(block)
                    f.write(block)
            if path.stat().st_size != size:
                raise CorruptData(f"{backend.url}/{name}: shorter than the {size} bytes the index says")
            yield path, hasher.digest()
        finally:
            path.unlink(missing_ok=True)

    # -- moves ---------------------------------------------------------------------------------

    def move_pack(self, pack: PackId, dst: Tier) -> int:
        """Make ``dst`` the home of a sealed pack (same bytes, same id); return bytes copied.

        Moving from warm to hot keeps the warm object as a verified copy (a later
        eviction then costs nothing); every other move deletes the source. A pack moved
        from hot to warm is noted ``unencoded`` (keys.py): its run re-encodes it when it completes.
        """
        with self.lock.hold():
            with self.index.read() as t:
                info = t.pack_get(pack)
                copy = t.copy_get(pack, dst)
            if info is None:
                raise NotFound(f"pack {pack.hex()}: not in the index")
            if info.state != PackState.SEALED:
                raise CorruptData(f"pack {pack.hex()}: still open; only sealed packs move between tiers")
            src = info.tier
            if src == dst:
                return 0
            name = pack_name(pack)
            with self.index.write() as t:
                t.move_put(pack, dst, NEW, clock.now_ns())
            digest, copied = None, 0
            if copy is not None:
                try:
                    self.backend(dst).verify(name, copy[1], info.size)
                    digest = copy[1]
                except (NotFound, CorruptData) as e:
                    log.warning("the %s copy of pack %s is not usable (%s); copying again", tier_name(dst), pack.hex(), e)
            if digest is None:
                digest = self.copy_verified(pack, src, dst, info.size)
                copied = info.size
            if src == Tier.HOT:
                self.stage_pinned(pack)
            keep_source = src == Tier.WARM and dst == Tier.HOT
            now = clock.now_ns()
            with self.index.write() as t:
                current = t.pack_get(pack)
                if current != info:  # cannot happen under the lock; refuse rather than guess
                    raise CorruptData(f"pack {pack.hex()} changed during its move; rerun `chunkfs tier`")
                t.pack_put(pack, dataclasses.replace(info, tier=dst))
                t.copy_delete(pack, dst)
                t.move_delete(pack, dst)
                if keep_source:
                    t.copy_put(pack, src, now, digest)
                else:
                    t.move_put(pack, src, OLD, now)
                if dst != Tier.HOT:
                    t.upload_delete(pack)
                elif self.configured(Tier.WARM) and t.copy_get(pack, Tier.WARM) is None:
                    t.upload_put(pack, now)
                if src == Tier.HOT and dst == Tier.WARM:  # an eviction: its run's re-encoding still to come
                    t.unencoded_put(pack, now)
                else:
                    t.unencoded_delete(pack)
            if not keep_source:
                self.backend(src).delete(name)
                with self.index.write() as t:
                    t.move_delete(pack, src)
            self.count(**{f"moved_packs_{tier_name(src)}_{tier_name(dst)}": 1,
                           f"moved_bytes_{tier_name(src)}_{tier_name(dst)}": info.size})  # fmt: skip
            return copied

    def stage_pinned(self, pack: PackId) -> None:
        """Copy the pinned chunks of a hot pack into the read cache before it leaves hot."""
        if self.readcache is None or not self.readcache.enabled:
            return
        with self.index.read() as t:
            pinned = {c for _, _, chunks in t.pins() for c in chunks}
        if not pinned:
            return
        name = pack_name(pack)
        entries, _ = read_entries(self.backend(Tier.HOT), name)
        for e in entries:
            if e.chunk in pinned:
                data = self.backend(Tier.HOT).get_range(name, e.offset, e.stored_len)
                self.readcache.put(e.chunk, e.flags, data)

    def audit(self, *, deep: bool = False) -> list[str]:
        """Problems with pack placement (tiering/audit.py)."""
        return audit_placement(self, deep=deep)
