"""Tier operations behind ``chunkfs tier``, ``tier move``, ``run complete``, ``thaw`` and ``sync``.

Each works the same whether or not the repository is mounted (docs/tiers.md,
"Who does what"): moves take the tier lock and run in the calling process;
uploads run in the process that holds the repository lock, so ``sync`` either
drains the queue itself or, when a mount holds the lock, watches its daemon
drain it.
"""

from __future__ import annotations

import logging
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from chunkfs import clock
from chunkfs.errors import BackendUnavailable, Conflict, NotFound, UsageError
from chunkfs.index.txn import RunRecord
from chunkfs.repo import Repository, lock_holder
from chunkfs.store.pack.files import pack_name
from chunkfs.store.tiering import lifecycle
from chunkfs.store.tiering.uploads import backlog
from chunkfs.types import PackId, PackInfo, PackState, Tier, tier_name

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
FIRST_RESTORE_POLL_S = 1.0
RESTORE_POLL_S = 30.0
SEAL_WAIT_S = 15.0
"""How long ``complete`` waits for a mount to seal the run's open packs (it takes about a second)."""
"""Restores are polled after 1 s, then at doubling intervals up to this: an expedited restore
(or a server that restores at once) is seen quickly, a bulk one costs a HEAD per pack every 30 s."""


def _norm(path: str) -> str:
    return "/" + path.strip("/")


def walk_files(repo: Repository, path: str) -> Iterator[tuple[int, str]]:
    """(inode, path) of every regular file at or under repository path ``path``."""
    root = repo.ns.resolve(_norm(path))
    stack = [(root, _norm(path))]
    while stack:
        ino, where = stack.pop()
        rec = repo.ns.getattr(ino)
        if stat.S_ISREG(rec.mode):
            yield ino, where
        elif stat.S_ISDIR(rec.mode):
            for name, child, _ in reversed(repo.ns.readdir(ino)):
                stack.append((child, where.rstrip("/") + "/" + name.decode(errors="surrogateescape")))


def runs_under(repo: Repository, path: str) -> list[str]:
    """The runs (pack groups) that ``path`` names: itself, the runs below it, or the run it is in."""
    norm = _norm(path)
    groups, _ = lifecycle.runs_of(repo.index)
    if norm == "/":
        found = sorted(groups)
    else:
        found = sorted(g for g in groups if g == norm or g.startswith(norm + "/"))
    if not found:
        try:
            found = sorted({repo.ns.group_of(ino) for ino, _ in walk_files(repo, norm)} & set(groups))
        except NotFound:
            raise NotFound(f"{norm}: no such file or directory in {repo.path}") from None
    if not found:
        raise NotFound(f"{norm}: no stored data under it (nothing to move)")
    return found


def _packs_of(repo: Repository, runs: list[str]) -> dict[str, list[tuple[PackId, PackInfo]]]:
    wanted = set(runs)
    groups, _ = lifecycle.runs_of(repo.index)
    return {g: packs for g, packs in groups.items() if g in wanted}


# -- policies ----------------------------------------------------------------------------------


def plan(repo: Repository, now: int | None = None) -> list[lifecycle.Action]:
    """What ``chunkfs tier`` would do now (``--dry-run``)."""
    return lifecycle.plan(repo.index, repo.tiers, repo.settings.lifecycle, now)


def apply(repo: Repository, actions: list[lifecycle.Action], progress: Progress = lambda n: None) -> lifecycle.Outcome:
    """Perform planned actions (each pack move or repack is crash-safe; a rerun finishes or undoes one
    that was interrupted); in a shared repository, then repack this node's packs a gc sweep left
    sparse."""
    with repo.tiers.lock.hold():  # also finishes what a killed run left
        outcome = repo.apply_tier_actions(actions, progress)
    repo.repack_after_sweep()  # a shared repository's packs a gc sweep left sparse
    return outcome


def move(repo: Repository, path: str, to: Tier, progress: Progress = lambda n: None) -> lifecycle.Outcome:
    """Move every sealed pack of the runs under ``path`` to tier ``to``, by hand.

    Moving to hot holds the runs there (the policy leaves them until ``run complete``);
    moving elsewhere lets the policy take them on from there.
    """
    if not repo.tiers.configured(to):
        raise UsageError(f"no {tier_name(to)} tier configured; set tiers.{tier_name(to)} in chunkfs.toml")
    runs = runs_under(repo, path)
    actions = []
    with repo.index.read() as t:
        marked = t.unencoded() if to == Tier.WARM else set()  # evicted there as they were: re-encoded there
    for run, packs in _packs_of(repo, runs).items():
        for src in Tier:
            chosen = [(p, i) for p, i in packs if i.tier == src and src != to and i.state == PackState.SEALED]
            if chosen:
                level = lifecycle.repack_level(repo.settings.lifecycle, src, to)
                size = sum(i.size for _, i in chosen)
                actions.append(lifecycle.Action(run, src, to, [p for p, _ in chosen], size, "by hand", level))
        if raw := lifecycle.reencode_evicted(run, packs, marked, repo.settings.lifecycle, "by hand"):
            actions.append(raw)
    with repo.tiers.lock.hold():
        outcome = repo.apply_tier_actions(actions, progress)
        with repo.index.write() as t:
            for run in runs:
                rec = t.run_get(run)
                t.run_put(run, rec._replace(held=Tier.HOT if to == Tier.HOT else None))
    return outcome


def complete(repo: Repository, path: str, *, wait_s: float = SEAL_WAIT_S) -> list[str]:
    """Mark the runs under ``path`` complete and have their open packs sealed at once, so that the
    next ``chunkfs tier`` moves all their data: by this process when it holds the repository (open
    packs then are a crashed writer's), else by the mount, whose background thread does it within a
    second of the mark (``Repository.seal_newly_completed``) — waited for here, up to ``wait_s``."""
    runs = runs_under(repo, path)
    now = clock.now_ns()
    with repo.index.write() as t:
        for run in runs:
            rec = t.run_get(run)
            t.run_put(run, RunRecord(now, rec.last_read_ns, None))
    if repo.writable:
        repo.packs.seal_groups(set(runs), now + 1)
        repo.packs.recover()
        return runs
    deadline = time.monotonic() + wait_s
    while open_packs(repo, set(runs)).packs and lock_holder(repo.path) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    return runs


@dataclass
class OpenPacks:
    """Data not sealed yet: it cannot move to another tier until its pack is."""

    packs: int = 0
    bytes: int = 0
    complete_packs: int = 0  # of runs already complete (sealed after lifecycle.seal_quiet, or at unmount)
    complete_bytes: int = 0

    def describe(self) -> str:
        if not self.packs:
            return ""
        h = _human
        text = f"{h(self.bytes)} in {self.packs} open packs is not sealed yet"
        if self.complete_bytes:
            text += (f" ({h(self.complete_bytes)} of complete runs: sealed once quiet for lifecycle.seal_quiet "
                     "or by `chunkfs run complete PATH`)")  # fmt: skip
        return text + "; runs still being written stay hot until they are complete"


def open_packs(repo: Repository, runs: set[str] | None = None) -> OpenPacks:
    """The open packs (of ``runs``, or all), and how much of it belongs to complete runs."""
    out = OpenPacks()
    complete = lifecycle.complete_runs(repo.index, repo.settings.lifecycle)
    with repo.index.read() as t:
        for _pack, info in t.packs():
            if info.state != PackState.OPEN or (runs is not None and info.group not in runs):
                continue
            out.packs += 1
            out.bytes += info.size
            if info.group in complete:
                out.complete_packs += 1
                out.complete_bytes += info.size
    return out


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# -- thaw --------------------------------------------------------------------------------------


@dataclass
class ThawResult:
    runs: list[str]
    packs: int = 0
    bytes: int = 0
    to: str = ""


def thaw(repo: Repository, path: str, progress: Progress = lambda n: None, *, wait_s: float | None = None) -> ThawResult:
    """Bring the cold packs of the runs under ``path`` back to warm (hot without a warm tier).

    Where the cold backend is an archive that must restore objects first (it offers
    ``restore(name) -> bool``), restores are requested for every pack and waited for
    (up to ``wait_s``; None: as long as it takes), then the packs move.
    """
    runs = runs_under(repo, path)
    dst = Tier.WARM if repo.tiers.configured(Tier.WARM) else Tier.HOT
    cold = [(p, i) for packs in _packs_of(repo, runs).values() for p, i in packs if i.tier == Tier.COLD]
    result = ThawResult(runs, to=tier_name(dst))
    if cold:
        restore = getattr(repo.tiers.backend(Tier.COLD), "restore", None)
        if restore is not None:
            _wait_restored(restore, cold, wait_s)
        with repo.tiers.lock.hold():
            for pack, info in cold:
                repo.tiers.move_pack(pack, dst)
                result.packs += 1
                result.bytes += info.size
                progress(info.size)
    now = clock.now_ns()
    with repo.index.write() as t:  # a thawed run counts as read now: it does not go cold again at once
        for run in runs:
            t.run_put(run, t.run_get(run)._replace(last_read_ns=now))
    return result


def _wait_restored(restore, packs: list[tuple[PackId, PackInfo]], wait_s: float | None) -> None:
    deadline = None if wait_s is None else time.monotonic() + wait_s
    pending = [pack_name(p) for p, _ in packs]
    delay = FIRST_RESTORE_POLL_S
    while True:
        pending = [name for name in pending if not restore(name)]
        if not pending:
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise BackendUnavailable(
                f"{len(pending)} packs are still being restored from the archive; run `chunkfs thaw` again later"
            )
        log.info("waiting for the archive to restore %d packs", len(pending))
        time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic())))
        delay = min(2 * delay, RESTORE_POLL_S)


# -- sync ----------------------------------------------------------------------------------------


@dataclass
class SyncResult:
    uploaded_bytes: int = 0
    by_daemon: bool = False  # a mount's daemon drained the queue while we watched
    open_packs: int = 0  # data not sealed yet, so not uploaded (``OpenPacks``)
    open_bytes: int = 0
    waiting: str = ""  # why, in words ('' when nothing waits)
    published: int = 0  # a shared repository: changes this process published to the log


def _note_waiting(repo: Repository, result: SyncResult) -> None:
    """What the upload could not take: data in packs not sealed yet (never 'all done' while it waits)."""
    waiting = open_packs(repo)
    result.open_packs, result.open_bytes, result.waiting = waiting.packs, waiting.bytes, waiting.describe()


def _replicate_and_back_up(repo: Repository, notice: Callable[[str], None]) -> None:
    """After the uploads: copy to the replicas and back up the metadata, so that what
    `sync` reports done survives the loss of this node (docs/operations.md). In a shared
    repository the log already has it, and the backup (where joins start) waits for a gc
    or another member's backup that holds the maintenance lease: skipped then."""
    if repo.replicas.configured:
        repo.replicas.run_once()
    try:
        repo.metabackup.run()
    except Conflict as e:
        notice(f"metadata backup skipped: {e}")


def sync(
    repo_dir: Path,
    progress: Progress = lambda n: None,
    *,
    timeout: float | None = None,
    notice: Callable[[str], None] = lambda message: None,
    poll: float = 0.2,
) -> SyncResult:
    """Wait until the write-back queue is empty (and, in a shared repository, every change is
    published to the log and every other node's is applied here).

    Without a process holding the repository (no mount), this process takes the lock and
    uploads. With one, its uploader does the work and this watches the queue (``notice``
    tells once why it does not shrink, if the daemon recorded an upload error).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    result = SyncResult()
    while True:
        try:
            repo = Repository(repo_dir, writable=True)
        except Conflict:
            pass
        else:
            with repo:
                if repo.uploader is None:
                    raise UsageError(f"{repo.path}: no warm tier configured (tiers.warm): nothing to upload")
                result.uploaded_bytes += repo.uploader.drain(progress)
                if repo.cluster is not None:
                    result.published = repo.cluster.sync()[0]
                    repo.cluster.beat()  # `chunkfs status` on every node shows this one
                _replicate_and_back_up(repo, notice)
                _note_waiting(repo, result)
            return result
        result.by_daemon = True
        with Repository(repo_dir, writable=False) as repo:
            if not repo.tiers.configured(Tier.WARM):
                raise UsageError(f"{repo.path}: no warm tier configured (tiers.warm): nothing to upload")
            last = backlog(repo.index)
            told = None
            while lock_holder(repo.path) is not None:
                b = backlog(repo.index)
                if b.packs == 0 and (repo.cluster is None or repo.cluster.pending()[0] == 0):
                    _replicate_and_back_up(repo, notice)
                    _note_waiting(repo, result)
                    return result
                if b.bytes < last.bytes:
                    progress(last.bytes - b.bytes)
                last = b
                with repo.index.read() as t:
                    error = t.upload_error()
                if error is not None and error[1] != told:
                    told = error[1]
                    notice(f"the mount's uploader reports: {error[1]}")
                if deadline is not None and time.monotonic() > deadline:
                    reason = f": {error[1]}" if error is not None else ""
                    raise BackendUnavailable(
                        f"{b.packs} packs ({b.bytes} bytes) still wait for upload after {timeout:.0f}s{reason}"
                    )
                time.sleep(poll)
        # the lock holder went away: take over
