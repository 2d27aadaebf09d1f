"""``chunkfs fsck``: is every byte that a retained version needs there, and right?

What it checks (docs/operations.md, "fsck"):

0. **The index file.** Every record of every database is read in a child process
   (``index/check.py``): a damaged index is reported with the way out (``chunkfs
   index rebuild``) before anything relies on it.
   **The tree.** The invariants index/keys.py states for names and the registry
   (``ops/treecheck.py``): ``parents`` the reverse of ``dirents``, link counts,
   everything reachable from the root, one ``ckpt_ino`` entry per record.
1. **References.** Every version in the history (``inohist``) and every current
   inode names a manifest; every manifest must exist, and every chunk in it
   must be in the chunk index.
2. **Index against packs.** Every pack in the index is read where its home is
   (hot, warm or cold): the object must exist, have the indexed size and a good
   footer, and every chunk-index entry pointing into it must match a footer
   entry (offset, length, flags).
3. **Content.** Every referenced chunk, and every base a referenced delta chunk
   needs (``sample``: a random fraction of them), is read from its pack —
   bypassing the read caches — decoded (a delta through its base) and hashed.

Problems are reported by what they break: each damaged or missing chunk is
traced to the files and versions that contain it (path, commit numbers,
whether the current content is affected), so an operator knows which
checkpoints to restore or re-create.

``repair``: index entries that are missing or wrong are rebuilt from pack
footers (including packs on a tier the index does not know); chunks that are
damaged or missing are fetched from a replica (or a verified warm copy of a
hot pack), checked, written into a new sealed pack on the hot tier and the
index repointed in one transaction; a pack that is missing, truncated or has
a bad footer has every chunk still pointing at it moved out the same way, and
is then dropped; the tree's problems that have one right answer are mended
(``ops/treecheck.py``). All of it under the tier lock, with ``moves`` notes, so a
kill at any point leaves either the old state or the new one. Repair needs
the repository opened for writing (not mounted).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from chunkfs import clock
from chunkfs.errors import ChunkfsError, ConfigError, CorruptData, NotFound
from chunkfs.index import check
from chunkfs.ops import treecheck
from chunkfs.repo import Repository
from chunkfs.store.maintenance.rewrite import PackRewrite
from chunkfs.store.pack import format as packfmt
from chunkfs.store.pack.files import pack_id_from_name, pack_name, read_entries
from chunkfs.types import (
    HOLE,
    ROOT_INODE,
    ChunkId,
    ChunkLocation,
    PackId,
    PackInfo,
    PackState,
    Tier,
    tier_name,
)

WHOLE_PACK_READ = 8
"""Read a pack whole (one GET) once this many of its chunks are to be checked; ranged reads below."""


@dataclass
class Problem:
    kind: str  # missing_manifest, missing_chunk, bad_chunk, missing_pack, truncated_pack, bad_footer, index_mismatch,
    # unknown_pack; the tree's (ops/treecheck.py): dangling_entry, parent_record, link_count, directory_links,
    # unreachable, registry
    message: str
    pack: str = ""
    chunk: str = ""
    tier: str = ""
    repaired: bool = False


@dataclass
class AffectedFile:
    path: str
    inode: int
    commits: list[int] = field(default_factory=list)  # versions whose content is damaged
    current: bool = False  # the live content is damaged
    chunks: int = 0  # damaged chunks it contains
    repaired: bool = False


@dataclass
class FsckReport:
    versions: int = 0
    manifests: int = 0
    chunks_referenced: int = 0
    chunks_checked: int = 0
    packs_checked: int = 0
    bytes_read: int = 0
    sample: float = 1.0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)
    affected: list[AffectedFile] = field(default_factory=list)
    repaired_chunks: int = 0
    reindexed_chunks: int = 0
    dropped_packs: list[str] = field(default_factory=list)
    new_packs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.repaired for p in self.problems)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ok"] = self.ok
        return d


Ref = tuple[int, int]  # (inode, commit; 0 = the current content)


def fsck(
    repo: Repository,
    *,
    repair: bool = False,
    sample: float = 1.0,
    seed: int | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> FsckReport:
    started = time.monotonic()
    report = FsckReport(sample=sample)
    check.walk(repo.index.path)  # every record readable? (in a child process: damage must not crash us)
    if repo.writable:
        repo.packs.flush()
    tree = _tree(repo, repair=repair)
    refs, manifest_problems = _references(repo, report)
    bad: dict[ChunkId, Problem] = {}  # referenced chunks that are missing or damaged
    with repo.index.read() as t:
        packs = dict(t.packs())
        by_pack: dict[PackId, dict[ChunkId, ChunkLocation]] = collections.defaultdict(dict)
        for chunk, loc in t.chunks():
            by_pack[loc.pack][chunk] = loc
    indexed = {c for entries in by_pack.values() for c in entries}
    for chunk in refs:
        if chunk not in indexed:
            bad[chunk] = Problem("missing_chunk", f"chunk {chunk.hex()}: referenced but not in the index", chunk=chunk.hex())
    # 2. the index against the packs
    damaged_packs: dict[PackId, Problem] = {}
    footers: dict[PackId, dict[ChunkId, packfmt.Entry]] = {}
    mismatched: dict[ChunkId, Problem] = {}
    for pack, entries in by_pack.items():
        if pack not in packs:
            for chunk in entries:
                p = Problem("unknown_pack", f"chunk {chunk.hex()}: indexed in pack {pack.hex()}, which the index does not know",
                            pack=pack.hex(), chunk=chunk.hex())  # fmt: skip
                mismatched[chunk] = p
                if chunk in refs:
                    bad[chunk] = p
    for pack, info in packs.items():
        problem = _check_pack(repo, pack, info, footers)
        report.packs_checked += 1
        progress(1)
        if problem is not None:
            damaged_packs[pack] = problem
            report.problems.append(problem)
            continue
        footer = footers.get(pack)
        if footer is None:
            continue
        for chunk, loc in by_pack.get(pack, {}).items():
            e = footer.get(chunk)
            if e is None or (e.offset, e.stored_len, e.raw_len, e.flags) != (loc.offset, loc.stored_len, loc.raw_len, loc.flags):
                p = Problem("index_mismatch", f"chunk {chunk.hex()}: the index entry does not match the footer of pack {pack.hex()}",
                            pack=pack.hex(), chunk=chunk.hex(), tier=tier_name(info.tier))  # fmt: skip
                mismatched[chunk] = p
                if chunk in refs:
                    bad[chunk] = p
    report.problems.extend(mismatched.values())
    bad_copies = _check_copies(repo, packs)
    report.problems.extend(bad_copies.values())
    # 3. content of the referenced chunks
    rng = random.Random(seed)
    to_check: dict[PackId, list[tuple[ChunkId, ChunkLocation]]] = collections.defaultdict(list)
    with repo.index.read() as t:
        for chunk in refs:
            if chunk in bad:
                continue
            loc = t.chunk_get(chunk)
            if loc.pack in damaged_packs and damaged_packs[loc.pack].kind == "missing_pack":
                bad[chunk] = damaged_packs[loc.pack]
                continue
            if sample >= 1.0 or rng.random() < sample:
                to_check[loc.pack].append((chunk, loc))
    for pack, items in to_check.items():
        info = packs[pack]
        for chunk, problem in _check_chunks(repo, pack, info, items, report).items():
            bad[chunk] = problem
    listed = {id(p) for p in report.problems}
    for p in bad.values():
        if id(p) not in listed:
            listed.add(id(p))
            report.problems.append(p)
    report.problems[:0] = tree + manifest_problems
    # 4. repair
    found_bad = dict(bad)
    if repair:
        if not repo.writable:
            raise ConfigError(f"{repo.path}: `chunkfs fsck --repair` needs the repository unmounted (opened for writing)")
        _repair(repo, report, bad, mismatched, damaged_packs, footers, packs, refs)
        _repair_copies(repo, bad_copies)
    # 5. what it means for people
    _affected(repo, report, found_bad, refs, bad)
    report.seconds = time.monotonic() - started
    return report


def _tree(repo: Repository, *, repair: bool) -> list[Problem]:
    """The tree's and the registry's invariants (ops/treecheck.py); with ``repair`` mended first,
    and each problem marked repaired if a second look no longer finds it."""
    found = treecheck.check(repo)
    if not (repair and found):
        return [Problem(p.kind, p.message) for p in found]
    if not repo.writable:
        raise ConfigError(f"{repo.path}: `chunkfs fsck --repair` needs the repository unmounted (opened for writing)")
    treecheck.repair(repo, found)
    left = {(p.kind, p.message) for p in treecheck.check(repo)}
    return [Problem(p.kind, p.message, repaired=(p.kind, p.message) not in left) for p in found]


def _references(repo: Repository, report: FsckReport) -> tuple[dict[ChunkId, list[Ref]], list[Problem]]:
    refs: dict[ChunkId, list[Ref]] = collections.defaultdict(list)
    problems = []
    manifests: dict[int, list | None] = {}
    with repo.index.read() as t:

        def add(ino: int, commit: int, mid: int) -> None:
            if not mid:
                return
            if mid not in manifests:
                manifests[mid] = t.manifest_get(mid)
            extents = manifests[mid]
            if extents is None:
                problems.append(Problem("missing_manifest", f"inode {ino} at commit {commit or 'current'}: manifest {mid} is missing"))
                return
            for e in extents:
                if e.chunk != HOLE:
                    refs[e.chunk].append((ino, commit))

        for v in t.inohist_all():
            report.versions += 1
            add(v.ino, v.commit, v.record.manifest)
        for ino, rec in t.inodes():
            add(ino, 0, rec.manifest)
        base_of = dict(t.deltas())
    # a delta's base is needed by whatever needs the delta: checked, repaired and named like it
    todo, seen = [c for c in refs if c in base_of], set()
    while todo:
        chunk = todo.pop()
        if chunk not in seen:
            seen.add(chunk)
            refs[base_of[chunk]].extend(refs[chunk])
            if base_of[chunk] in base_of:
                todo.append(base_of[chunk])
    report.manifests = len(manifests)
    report.chunks_referenced = len(refs)
    return refs, problems


def _check_pack(repo: Repository, pack: PackId, info: PackInfo, footers: dict) -> Problem | None:
    name = pack_name(pack)
    tier = tier_name(info.tier)
    try:
        backend = repo.tiers.backend(info.tier)
        size = backend.size(name)
    except NotFound:
        return Problem("missing_pack", f"pack {pack.hex()}: missing from the {tier} tier ({repo.tiers.url(info.tier)})",
                       pack=pack.hex(), tier=tier)  # fmt: skip
    except ChunkfsError as e:
        return Problem("missing_pack", f"pack {pack.hex()}: cannot be read on the {tier} tier: {e}", pack=pack.hex(), tier=tier)
    if info.state == PackState.OPEN:
        if size < info.size:
            return Problem("truncated_pack", f"pack {pack.hex()} (open): {size} bytes, the index says {info.size}",
                           pack=pack.hex(), tier=tier)  # fmt: skip
        return None
    if size != info.size:
        return Problem("truncated_pack", f"pack {pack.hex()}: {size} bytes on the {tier} tier, the index says {info.size}",
                       pack=pack.hex(), tier=tier)  # fmt: skip
    try:
        entries, sealed = read_entries(backend, name)
    except CorruptData as e:
        return Problem("bad_footer", f"pack {pack.hex()}: {e}", pack=pack.hex(), tier=tier)
    if not sealed:
        return Problem("bad_footer", f"pack {pack.hex()}: sealed in the index but has no footer", pack=pack.hex(), tier=tier)
    footers[pack] = {e.chunk: e for e in entries}
    return None


def _check_copies(repo: Repository, packs: dict) -> dict[tuple[PackId, Tier], Problem]:
    """Extra copies (``copies``: a write-back upload on warm) must exist with the pack's size."""
    out = {}
    with repo.index.read() as t:
        copies = [(p, tier) for p, tier, _, _ in t.copies()]
    for pack, tier in copies:
        info = packs.get(pack)
        if info is None:
            continue
        try:
            size = repo.tiers.backend(tier).size(pack_name(pack))
            why = None if size == info.size else f"{size} bytes, the pack has {info.size}"
        except ChunkfsError as e:
            why = str(e)
        if why is not None:
            out[(pack, tier)] = Problem("bad_copy", f"pack {pack.hex()}: its {tier_name(tier)} copy is not usable ({why})",
                                        pack=pack.hex(), tier=tier_name(tier))  # fmt: skip
    return out


def _repair_copies(repo: Repository, bad_copies: dict) -> None:
    """Forget unusable copies; a hot pack's warm copy is queued to be uploaded again."""
    if not bad_copies:
        return
    now = clock.now_ns()
    with repo.index.write() as t:
        for (pack, tier), problem in bad_copies.items():
            t.copy_delete(pack, tier)
            info = t.pack_get(pack)
            if tier == Tier.WARM and info is not None and info.tier == Tier.HOT:
                t.upload_put(pack, now)
            problem.repaired = True


def _check_chunks(repo, pack: PackId, info: PackInfo, items, report: FsckReport) -> dict[ChunkId, Problem]:
    name = pack_name(pack)
    tier = tier_name(info.tier)
    backend = repo.tiers.backend(info.tier)
    whole = None
    if len(items) >= WHOLE_PACK_READ:
        try:
            whole = backend.get(name)
            report.bytes_read += len(whole)
        except ChunkfsError:
            whole = None
    bad = {}
    for chunk, loc in items:
        try:
            if whole is not None:
                stored = whole[loc.offset : loc.offset + loc.stored_len]
            else:
                stored = backend.get_range(name, loc.offset, loc.stored_len)
                report.bytes_read += len(stored)
            if len(stored) != loc.stored_len:
                raise CorruptData(f"pack is truncated (read {len(stored)} of {loc.stored_len} bytes)")
            repo.chunks.verify(chunk, stored, loc.raw_len, loc.flags, f"pack {pack.hex()}")
        except ChunkfsError as e:
            why = e.detail if isinstance(e, CorruptData) else str(e)
            bad[chunk] = Problem("bad_chunk", f"chunk {chunk.hex()} in pack {pack.hex()} ({tier} tier): {why}",
                                 pack=pack.hex(), chunk=chunk.hex(), tier=tier)  # fmt: skip
        report.chunks_checked += 1
    return bad


# -- repair ---------------------------------------------------------------------------------


def _good_bytes(repo: Repository, chunk: ChunkId, loc: ChunkLocation, info: PackInfo | None, *, primary: bool) -> bytes | None:
    """Verified stored bytes of a chunk: its home (if ``primary``), a warm copy, a replica."""
    name = pack_name(loc.pack)
    sources = []
    if primary and info is not None:
        sources.append(info.tier)
    with repo.index.read() as t:
        sources += [tier for tier, _, _ in t.copies_of(loc.pack)]
    for tier in sources:
        try:
            stored = repo.tiers.backend(tier).get_range(name, loc.offset, loc.stored_len)
        except ChunkfsError:
            continue
        if repo._verify_stored(chunk, stored, loc.raw_len, loc.flags) is not None:
            return stored
    if repo.replicas.configured:
        return repo.replicas.fetch(chunk, loc)
    return None


def _repair(repo: Repository, report: FsckReport, bad, mismatched, damaged_packs, footers, packs, refs) -> None:
    with repo.tiers.lock.hold():
        # a) index entries from footers: wrong or missing entries of chunks whose bytes are in some pack
        wanted = set(bad) | set(mismatched)
        if wanted:
            candidates = _footer_candidates(repo, wanted, footers, packs)
            fixed = {}
            for chunk, (pack, tier, entry, new_pack) in candidates.items():
                stored = repo.tiers.backend(tier).get_range(pack_name(pack), entry.offset, entry.stored_len)
                if repo._verify_stored(chunk, stored, entry.raw_len, entry.flags) is None:
                    continue
                fixed[chunk] = (pack, entry, new_pack, packfmt.delta_base(stored, entry.flags))
            if fixed:
                with repo.index.write() as t:
                    for chunk, (pack, entry, new_pack, base) in fixed.items():
                        if new_pack is not None and t.pack_get(pack) is None:
                            t.pack_put(pack, new_pack)
                        t.chunk_put(chunk, ChunkLocation(pack, entry.offset, entry.stored_len, entry.raw_len, entry.flags))
                        if base is not None:
                            t.delta_put(chunk, base)
                for chunk in fixed:
                    for p in (bad.pop(chunk, None), mismatched.pop(chunk, None)):
                        if p is not None:
                            p.repaired = True
                    report.reindexed_chunks += 1
        # b) damaged or missing chunks, and every live chunk of a damaged pack: into new hot packs
        with repo.index.read() as t:
            move: dict[ChunkId, ChunkLocation] = {c: t.chunk_get(c) for c in bad if t.chunk_get(c) is not None}
            for chunk, loc in t.chunks():
                if loc.pack in damaged_packs:
                    move.setdefault(chunk, loc)
            for chunk, _epoch, _ns, loc in t.condemned():  # the one liveness rule (store/maintenance/rewrite.py)
                if loc.pack in damaged_packs:
                    move.setdefault(chunk, loc)
        rw = PackRewrite(repo.index, repo.tiers.backend, Tier.HOT, "", repo.path / "tmp", repo.tiers.pack_size,
                         write_back=repo.tiers.configured(Tier.WARM))  # fmt: skip
        relocated: set[ChunkId] = set()
        try:
            for chunk, loc in move.items():
                info = packs.get(loc.pack)
                stored = _good_bytes(repo, chunk, loc, info, primary=chunk not in bad)
                if stored is not None:
                    rw.add(chunk, loc, bytes(stored), loc.raw_len, loc.flags, info.group if info is not None else "")
                    relocated.add(chunk)
            rw.seal()
        except BaseException:
            rw.abort()
            raise
        with repo.index.write() as t:  # unreferenced (garbage) and unreadable: nothing needs them
            for chunk, loc in list(t.chunks()):
                if loc.pack in damaged_packs and chunk not in refs and chunk not in relocated:
                    t.chunk_delete(chunk)
            for chunk, _epoch, _ns, loc in list(t.condemned()):
                if loc.pack in damaged_packs and chunk not in relocated:
                    t.condemned_delete(chunk)
        rw.delete(rw.switch({pack: [c for c, loc in move.items() if loc.pack == pack] for pack in damaged_packs}))
        report.new_packs += [p.hex() for p in rw.result.new_packs]
        for pack in rw.result.retired:
            damaged_packs[pack].repaired = True
            report.dropped_packs.append(pack.hex())
        for chunk in relocated:
            p = bad.get(chunk)
            if p is not None:
                p.repaired = True
                report.repaired_chunks += 1
                del bad[chunk]
            if chunk in mismatched:
                mismatched.pop(chunk).repaired = True
        # a problem shared by several chunks (a missing pack) is repaired only when all of them are
        for p in report.problems:
            if p.kind in ("missing_pack", "truncated_pack", "bad_footer") and any(q is p for q in bad.values()):
                p.repaired = False
    if rw.result.new_packs:
        repo.packs.on_sealed()


def _footer_candidates(repo, wanted: set[ChunkId], footers, packs) -> dict:
    """chunk → (pack, tier, footer entry, PackInfo to add or None) for wanted chunks found in a good footer."""
    out = {}
    for pack, footer in footers.items():
        for chunk in wanted & footer.keys():
            out.setdefault(chunk, (pack, packs[pack].tier, footer[chunk], None))
    missing = wanted - out.keys()
    if not missing:
        return out
    for tier in Tier:  # packs on a tier that the index does not know (a crash, a lost index entry)
        if not repo.tiers.configured(tier):
            continue
        backend = repo.tiers.backend(tier)
        for name in backend.list("packs/"):
            pack = pack_id_from_name(name)
            if pack is None or pack in packs:
                continue
            try:
                entries, sealed = read_entries(backend, name)
            except ChunkfsError:
                continue
            if not sealed:
                continue
            info = PackInfo(tier, PackState.SEALED, backend.size(name), len(entries), "", clock.now_ns())
            for e in entries:
                if e.chunk in missing:
                    out.setdefault(e.chunk, (pack, tier, e, info))
    return out


# -- naming what is affected ---------------------------------------------------------------


def _affected(repo: Repository, report: FsckReport, bad: dict, refs: dict, still_bad: dict) -> None:
    damaged: dict[int, AffectedFile] = {}
    chunks_of: dict[int, set[ChunkId]] = collections.defaultdict(set)
    for chunk in bad:
        for ino, commit in refs.get(chunk, ()):
            a = damaged.setdefault(ino, AffectedFile("", ino, repaired=True))
            if chunk in still_bad:
                a.repaired = False
            if commit:
                if commit not in a.commits:
                    a.commits.append(commit)
            else:
                a.current = True
            chunks_of[ino].add(chunk)  # one chunk in several versions is one damaged chunk
            a.chunks = len(chunks_of[ino])
    if not damaged:
        return
    paths = paths_of(repo, set(damaged))
    for ino, a in sorted(damaged.items()):
        a.path = paths.get(ino, f"<inode {ino}, no longer linked>")
        a.commits.sort()
        report.affected.append(a)


def paths_of(repo: Repository, inodes: set[int]) -> dict[int, str]:
    """A repository path for each inode: where it is linked now, else where it was last linked."""
    last_link: dict[int, tuple[int, int, bytes]] = {}  # child → (commit, parent, name) of its newest link

    def history_map():
        if not last_link:
            with repo.index.read() as t:
                for parent, name, commit, child in t.dirhist_all():
                    if child and (child not in last_link or commit > last_link[child][0]):
                        last_link[child] = (commit, parent, name)
        return last_link

    cache: dict[int, str] = {ROOT_INODE: ""}

    def path(ino: int, depth: int = 0) -> str | None:
        if ino in cache:
            return cache[ino]
        if depth > 4096:
            return None
        with repo.index.read() as t:
            links = t.parents(ino)
        if links:
            parent, name = links[0]
        else:
            hit = history_map().get(ino)
            if hit is None:
                return None
            _, parent, name = hit
        head = path(parent, depth + 1)
        if head is None:
            return None
        cache[ino] = f"{head}/{os.fsdecode(name)}"
        return cache[ino]

    return {ino: p for ino in inodes if (p := path(ino)) is not None}
