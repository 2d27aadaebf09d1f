"""Tiers: which backend holds each tier, and moving sealed packs between them.

A sealed pack has one *home* tier (``PackInfo.tier``) and maybe verified extra
copies (``copies``: a write-back upload, or the warm copy kept when a pack is
brought back to hot). Every operation that creates or deletes a pack object on
any tier runs here, under the tier lock (``REPO/tiers.lock``, flock'd, plus a
thread lock), so no two of them interleave, in this process or another.

A **move** (same pack, other tier) is: note the new object in ``moves`` →
copy → verify size and BLAKE3 at the destination → one LMDB transaction
switches the home and notes the old object for deletion → delete the source →
forget the note. A **repack** (``cold``: the live chunks of one run's packs,
recompressed, into new packs of that run only) is the same with new pack ids:
the chunk locations switch in the same transaction as the pack homes.

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
import fcntl
import logging
import os
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import blake3

from chunkfs import clock, config
from chunkfs.errors import BackendUnavailable, ConfigError, CorruptData, NotFound
from chunkfs.index import Index
from chunkfs.store import packfmt
from chunkfs.store.backend import ARCHIVE_STORAGE_CLASSES, Backend, LocalBackend, os_error
from chunkfs.store.packs import pack_id_from_name, pack_name, read_entries
from chunkfs.store.url import backend_for
from chunkfs.types import ChunkId, ChunkLocation, PackId, PackInfo, PackState, Tier

log = logging.getLogger(__name__)

NEW, OLD = 0, 1  # kinds of ``moves`` entries
COPY_BLOCK = 8 << 20
UPLOAD_PART_SIZE = 16 << 20
UPLOAD_CONCURRENCY = 8
"""A 128 MiB pack goes up as 8 parts at once (S3Backend's default, 64 MiB × 4, leaves a pack at 2)."""
UPLOAD_PACKS = 2
"""Packs the write-back uploads at once: while one pack is read and hashed, waits for its
verifying HEAD (rclone hashes the whole object for its ETag then) or commits to the index,
the other keeps the connections busy."""

Transform = Callable[[ChunkId, bytes, int, int], tuple[bytes, int]]
"""(chunk, stored, raw length, flags) → (stored, flags): how a repack re-encodes a chunk."""


def tier_name(tier: Tier) -> str:
    return tier.name.lower()


def parse_tier(name: str) -> Tier:
    try:
        return Tier[name.upper()]
    except KeyError:
        raise ConfigError(f"{name!r} is not a tier; use hot, warm or cold") from None


class TierLock:
    """Mutual exclusion of tier operations: a thread lock inside the process, flock across processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd = -1
        self.on_acquire: Callable[[], None] | None = None

    @contextlib.contextmanager
    def hold(self, *, blocking: bool = True) -> Iterator[bool]:
        """Hold the lock for the block; yields False (and holds nothing) if not ``blocking`` and busy."""
        if not self._thread_lock.acquire(blocking=blocking):
            yield False
            return
        try:
            if self._depth == 0:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    os.close(fd)
                    yield False
                    return
                self._fd = fd
            self._depth += 1
            try:
                if self._depth == 1 and self.on_acquire is not None:
                    self.on_acquire()
                yield True
            finally:
                self._depth -= 1
                if self._depth == 0:
                    os.close(self._fd)  # releases the flock
                    self._fd = -1
        finally:
            self._thread_lock.release()


def upload_built(backend: Backend, b: PackBuilder, built: list[tuple[PackId, int, int]]) -> int:
    """Seal ``b``, upload it to ``backend`` and verify it there (the local file goes either way);
    add ``(pack, size, chunks)`` to ``built``. Returns the size."""
    size, digest = b.seal()
    try:
        backend.put_file(pack_name(b.pack), b.path, blake3_digest=digest)
        backend.verify(pack_name(b.pack), digest, size)
    finally:
        b.path.unlink(missing_ok=True)
    built.append((b.pack, size, len(b.entries)))
    return size


@dataclass
class RepackResult:
    packs_in: int = 0
    packs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    chunks: int = 0


class Tiers:
    """The tiers of one repository and every operation that moves packs between them."""

    def __init__(self, repo_path: Path, settings: config.Settings, index: Index, hot: LocalBackend) -> None:
        self.repo_path = repo_path
        self.settings = settings.tiers
        self.pack_size = settings.packs.target_size
        self.index = index
        self._backends: dict[Tier, Backend] = {Tier.HOT: hot}
        self._open_lock = threading.Lock()
        self._reading = threading.Lock()  # _local_copy: one hot pack read at a time
        self.lock = TierLock(repo_path / "tiers.lock")
        self.lock.on_acquire = self._resume_locked
        self.readcache = None  # set by the repository: pinned chunks are staged there before leaving hot
        self.transform: Transform | None = None  # set by the repository: the cold re-encoding
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
                b = self._backends[tier] = open_backend(url, self.settings, storage_class, self.repo_path)
            return b

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

    def _count(self, **deltas: int) -> None:
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

    def _copy(self, pack: PackId, src: Tier, dst: Tier, size: int) -> bytes:
        """Copy a pack object from ``src`` to ``dst``, verify it there; return its BLAKE3."""
        name = pack_name(pack)
        sb, db = self.backend(src), self.backend(dst)
        with self._local_copy(sb, name, size) as (path, digest):
            db.put_file(name, path, blake3_digest=digest)
        db.verify(name, digest, size)
        return digest

    @contextlib.contextmanager
    def _local_copy(self, backend: Backend, name: str, size: int) -> Iterator[tuple[Path, bytes]]:
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

    # -- write-back ----------------------------------------------------------------------------

    def upload_copies(self, packs: list[PackId], *, blocking: bool = True) -> list[int | Exception] | None:
        """Copy hot packs to the warm tier, ``UPLOAD_PACKS`` at a time, each verified and recorded
        on its own; return, pack by pack, the bytes uploaded or the error that stopped it (None:
        not ``blocking`` and another tier operation holds the lock).

        The workers run while this thread holds the tier lock, and take no tier lock themselves.
        """
        with self.lock.hold(blocking=blocking) as got:
            if not got:
                return None
            with ThreadPoolExecutor(UPLOAD_PACKS, thread_name_prefix="chunkfs-upload") as pool:
                futures = [pool.submit(self._upload_copy, pack) for pack in packs]
            return [f.exception() or f.result() for f in futures]

    def _upload_copy(self, pack: PackId) -> int:
        """Upload one pack (the tier lock held); drop the queue entry of a pack that no longer needs
        it (gone, moved, already copied) and return 0 for it."""
        with self.index.read() as t:
            info = t.pack_get(pack)
            has_copy = t.copy_get(pack, Tier.WARM) is not None
        if info is None or info.tier != Tier.HOT or info.state != PackState.SEALED or has_copy:
            with self.index.write() as t:
                t.upload_delete(pack)
            return 0
        with self.index.write() as t:
            t.move_put(pack, Tier.WARM, NEW, clock.now_ns())
        digest = self._copy(pack, Tier.HOT, Tier.WARM, info.size)
        with self.index.write() as t:
            t.copy_put(pack, Tier.WARM, clock.now_ns(), digest)
            t.upload_delete(pack)
            t.move_delete(pack, Tier.WARM)
        self._count(uploaded_packs=1, uploaded_bytes=info.size)
        return info.size

    # -- moves ---------------------------------------------------------------------------------

    def move_pack(self, pack: PackId, dst: Tier) -> int:
        """Make ``dst`` the home of a sealed pack (same bytes, same id); return bytes copied.

        Moving from warm to hot keeps the warm object as a verified copy (a later
        eviction then costs nothing); every other move deletes the source.
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
                digest = self._copy(pack, src, dst, info.size)
                copied = info.size
            if src == Tier.HOT:
                self._stage_pinned(pack)
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
            if not keep_source:
                self.backend(src).delete(name)
                with self.index.write() as t:
                    t.move_delete(pack, src)
            self._count(**{f"moved_packs_{tier_name(src)}_{tier_name(dst)}": 1,
                           f"moved_bytes_{tier_name(src)}_{tier_name(dst)}": info.size})  # fmt: skip
            return copied

    def _stage_pinned(self, pack: PackId) -> None:
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

    def repack(self, group: str, packs: list[PackId], dst: Tier, progress: Callable[[int], None] = lambda n: None) -> RepackResult:
        """Rewrite the live chunks of ``packs`` (one run's) into new packs on ``dst``, re-encoded by
        ``transform``; switch every chunk location and pack home in one transaction."""
        result = RepackResult()
        with self.lock.hold():
            with self.index.read() as t:
                infos = {p: t.pack_get(p) for p in packs}
            infos = {p: i for p, i in infos.items() if i is not None and i.state == PackState.SEALED and i.tier != dst}
            if not infos:
                return result
            tmpdir = self.repo_path / "tmp"
            tmpdir.mkdir(exist_ok=True)
            built: list[tuple[PackId, int, int]] = []  # (pack, size, chunks)
            relocated: dict[ChunkId, tuple[PackId, ChunkLocation]] = {}  # chunk → (old pack, new location)
            builder: PackBuilder | None = None

            def finish() -> None:
                nonlocal builder
                if builder is None:
                    return
                b, builder = builder, None
                size = upload_built(self.backend(dst), b, built)
                result.packs_out += 1
                result.bytes_out += size

            try:
                for pack, info in sorted(infos.items(), key=lambda kv: kv[1].created_ns):
                    src = self.backend(info.tier)
                    with self._local_copy(src, pack_name(pack), info.size) as (path, _digest):
                        local = LocalBackend(path.parent)
                        entries, _ = read_entries(local, path.name)
                        with self.index.read() as t:
                            live = [e for e in entries if _points_at(t.chunk_get(e.chunk), pack, e)]
                        with open(path, "rb") as f:
                            for e in live:
                                stored = os.pread(f.fileno(), e.stored_len, e.offset)
                                flags = e.flags
                                if self.transform is not None:
                                    stored, flags = self.transform(e.chunk, stored, e.raw_len, e.flags)
                                if builder is None:
                                    new = secrets.token_bytes(16)
                                    with self.index.write() as t:
                                        t.move_put(new, dst, NEW, clock.now_ns())
                                    builder = PackBuilder(new, tmpdir / f"{new.hex()}.pack")
                                entry = builder.add(e.chunk, stored, e.raw_len, flags)
                                relocated[e.chunk] = (pack, ChunkLocation(builder.pack, entry.offset, entry.stored_len, e.raw_len, flags))
                                result.chunks += 1
                                if builder.size >= self.pack_size:
                                    finish()
                    result.packs_in += 1
                    result.bytes_in += info.size
                    progress(info.size)
                finish()
            finally:
                if builder is not None:
                    builder.discard()
            now = clock.now_ns()
            old_objects: list[tuple[PackId, Tier]] = []
            with self.index.write() as t:
                for pack, size, count in built:
                    t.pack_put(pack, PackInfo(dst, PackState.SEALED, size, count, group, now))
                    t.move_delete(pack, dst)
                for chunk, (old, loc) in relocated.items():
                    current = t.chunk_get(chunk)
                    if current is not None and current.pack == old:
                        t.chunk_put(chunk, loc)
                for pack, info in infos.items():
                    tiers = [info.tier] + [tier for tier, _, _ in t.copies_of(pack)]
                    for tier in tiers:
                        t.copy_delete(pack, tier)
                        t.move_put(pack, tier, OLD, now)
                        old_objects.append((pack, tier))
                    t.pack_delete(pack)
                    t.upload_delete(pack)
            for pack, tier in old_objects:
                self.backend(tier).delete(pack_name(pack))
                with self.index.write() as t:
                    t.move_delete(pack, tier)
            for pack, info in infos.items():
                self._count(**{f"moved_packs_{tier_name(info.tier)}_{tier_name(dst)}": 1,
                               f"moved_bytes_{tier_name(info.tier)}_{tier_name(dst)}": info.size})  # fmt: skip
        return result

    # -- checking -------------------------------------------------------------------------------

    def audit(self, *, deep: bool = False) -> list[str]:
        """Problems with pack placement: an indexed pack or copy missing (or of the wrong size)
        where the index says it is, an object on a tier that nothing explains, an operation still
        in flight. ``deep`` also compares every remote copy's BLAKE3 metadata."""
        problems = []
        with self.index.read() as t:
            packs = dict(t.packs())
            copies = {(p, tier): digest for p, tier, _, digest in t.copies()}
            notes = [(p, tier) for p, tier, _, _ in t.moves()]
        for pack, tier in notes:
            problems.append(f"pack {pack.hex()}: a {tier_name(tier)} tier operation is unfinished (rerun `chunkfs tier`)")
        expected: dict[Tier, set[str]] = {tier: set() for tier in Tier}
        for pack, info in packs.items():
            expected[info.tier].add(pack_name(pack))
        for pack, tier in copies:
            expected[tier].add(pack_name(pack))
        for tier in Tier:
            if not self.configured(tier):
                for name in sorted(expected[tier]):
                    problems.append(f"{name}: placed on the {tier_name(tier)} tier, which is not configured")
                continue
            b = self.backend(tier)
            present = {n for n in b.list("packs/") if pack_id_from_name(n) is not None}
            for name in sorted(expected[tier] - present):
                problems.append(f"{b.url}/{name}: missing")
            for name in sorted(present - expected[tier]):
                pack = pack_id_from_name(name)
                if (pack, tier) not in notes:
                    problems.append(f"{b.url}/{name}: not in the index (orphan)")
            for name in sorted(expected[tier] & present):
                pack = pack_id_from_name(name)
                info = packs.get(pack)
                if info is not None and info.tier == tier and info.state == PackState.SEALED:
                    actual = b.size(name)
                    if actual != info.size:
                        problems.append(f"{b.url}/{name}: {actual} bytes, the index says {info.size}")
                if deep and (pack, tier) in copies and info is not None:
                    try:
                        b.verify(name, copies[(pack, tier)], info.size)
                    except CorruptData as e:
                        problems.append(str(e))
        return problems


def _points_at(loc: ChunkLocation | None, pack: PackId, entry: packfmt.Entry) -> bool:
    return loc is not None and loc.pack == pack and loc.offset == entry.offset


def open_backend(url: str, settings: config.TierSettings, storage_class: str, base: Path) -> Backend:
    """The backend of a tier location, with the repository's S3 settings."""
    if "://" in url and urlsplit(url).scheme.lower() == "s3":
        from chunkfs.store.s3 import S3Backend

        return S3Backend(
            url,
            endpoint_url=settings.endpoint_url or None,
            region=settings.region or None,
            addressing_style=settings.addressing_style or None,
            storage_class=storage_class or None,
            restore_days=settings.cold_restore_days,
            restore_tier=settings.cold_restore_tier,
            part_size=UPLOAD_PART_SIZE,
            max_concurrency=UPLOAD_CONCURRENCY,
        )
    return backend_for(url, base=base)


class PackBuilder:
    """Writes a new sealed pack to a local file front to back (repacks), hashing it on the way."""

    def __init__(self, pack: PackId, path: Path) -> None:
        self.pack = pack
        self.path = path
        self.entries: list[packfmt.Entry] = []
        self._hasher = blake3.blake3()
        try:
            self._f = open(path, "wb")
        except OSError as e:
            raise os_error(e, str(path)) from None
        self.size = 0
        self._write(packfmt.encode_header(pack))

    def _write(self, data: bytes) -> None:
        try:
            self._f.write(data)
        except OSError as e:
            raise os_error(e, str(self.path)) from None
        self._hasher.update(data)
        self.size += len(data)

    def add(self, chunk: ChunkId, stored: bytes, raw_len: int, flags: int) -> packfmt.Entry:
        self._write(packfmt.encode_record(chunk, flags, raw_len, len(stored)))
        entry = packfmt.Entry(chunk, self.size, len(stored), raw_len, flags)
        self._write(stored)
        self.entries.append(entry)
        return entry

    def seal(self) -> tuple[int, bytes]:
        """Write the footer and close; return (size, BLAKE3 of the whole pack)."""
        self._write(packfmt.encode_footer(self.entries, self.size))
        try:
            self._f.close()
        except OSError as e:
            raise os_error(e, str(self.path)) from None
        return self.size, self._hasher.digest()

    def discard(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)
