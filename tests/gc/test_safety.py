"""gc's safety: racing writers lose nothing; killed at any step, a rerun finishes the job;
leftovers of crashed writes are reclaimed."""

from __future__ import annotations

import os
import random
import threading
import time

import blake3
import pytest
from helpers.cli import chunkfs, cli_json
from helpers.gc import BLOCK, content, read, rmtree, write

from chunkfs.engine import codec
from chunkfs.ops import gc, retention
from chunkfs.store.backends import ownership
from chunkfs.store.pack.files import pack_name
from chunkfs.types import HOLE, Tier


def cli_gc(repo_path, *args, **kw):
    """``chunkfs gc --grace 0s ARGS --json``, which must succeed: its report."""
    return cli_json("gc", "--repo", repo_path, "--grace", "0s", *args, **kw)


def verify_everything(repo) -> int:
    """Every remaining version reads back with its recorded BLAKE3; every referenced chunk is indexed.
    Returns how many versions were checked."""
    checked = 0
    with repo.index.read() as t:
        versions = [v for v in t.inohist_all() if v.record.manifest]
        assert not list(t.moves()), "tier operations left unfinished"
        for v in versions:
            for e in t.manifest_get(v.record.manifest):
                if e.chunk != HOLE:
                    assert t.chunk_get(e.chunk) is not None, f"ino {v.ino}@{v.commit}: chunk {e.chunk.hex()} lost"
    for v in versions:
        data = bytes(repo.content_of(repo.history.extents(v)).read(0, v.record.size))
        if v.blake3 != bytes(32):
            assert blake3.blake3(data).digest() == v.blake3, f"ino {v.ino}@{v.commit}: wrong bytes"
        checked += 1
    assert not repo.tiers.audit(), repo.tiers.audit()
    return checked


def test_gc_racing_four_writers_loses_nothing(make_repo, repo_path, gc_env):
    repo = make_repo()
    stop = threading.Event()
    expected: dict[str, bytes] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []
    progress = [0] * 4

    def writer(i: int) -> None:
        rnd = random.Random(i)
        try:
            for it in range(100_000):
                if stop.is_set() and it >= 20:
                    break
                time.sleep(0.02)
                path = f"/w/t{i}/f{it % 3}"
                # shared blocks (seeds 0..11, all writers), plus one block of its own
                seeds = rnd.sample(range(12), 3) + [10_000_000 + i * 100_000 + it]
                data = content(*seeds)
                write(repo, path, data)
                with lock:
                    expected[path] = data
                    progress[i] = it
                if it % 7 == 6:
                    rmtree(repo, path)
                    with lock:
                        del expected[path]
                if it % 5 == 0:
                    repo.packs.seal_all()  # sealed packs are what gc deletes and repacks
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    for i in range(4):
        write(repo, f"/w/t{i}/.keep", b"")  # the directories exist before the race
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while min(progress) < 10 and time.monotonic() < deadline and not errors:
        time.sleep(0.05)  # every writer has versions to drop before the first gc
    runs = 0
    totals: dict[str, int] = {}
    raced = False
    # at least five gc runs while the writers write, more (up to 20) until one of them
    # has dropped versions and condemned chunks: on a loaded machine a run may find none
    while runs < 5 or (not raced and runs < 20):
        out = cli_gc(repo_path, "--keep-within", "0s", "--repack-below", "0.9")
        for k in ("chunks_condemned", "chunks_swept", "chunks_waiting", "packs_deleted", "packs_repacked",
                  "versions_dropped"):
            totals[k] = totals.get(k, 0) + out[k]
        runs += 1
        raced = totals["versions_dropped"] > 0 and totals["chunks_condemned"] > 0
    writing_throughout = all(t.is_alive() for t in threads)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    repo.packs.seal_all()
    during = dict(totals)
    out = cli_gc(repo_path, "--keep-within", "0s", "--repack-below", "0.9")
    for k in totals:
        totals[k] += out[k]
    for path, data in expected.items():
        assert read(repo, path) == data, path
    assert verify_everything(repo) >= len(expected)
    print("gc runs during the race:", runs, during, "with the last one:", totals)
    # gc condemned chunks while the writers wrote (the race), and reclaimed packs in the end
    assert writing_throughout, "the writers stopped before the fifth gc: no race"
    assert during["versions_dropped"] > 0 and during["chunks_condemned"] > 0
    assert totals["chunks_swept"] > 0 and totals["packs_deleted"] + totals["packs_repacked"] > 0


def _populate(repo) -> dict[str, bytes]:
    files = {}
    for s in range(6):
        files[f"/m/run/checkpoint-{s}/model.bin"] = content(*range(6), *(1000 + s * 100 + k for k in range(20)))
        write(repo, f"/m/run/checkpoint-{s}/model.bin", files[f"/m/run/checkpoint-{s}/model.bin"])
    for s in range(4):  # rotated away: their unique blocks become garbage
        rmtree(repo, f"/m/run/checkpoint-{s}")
        del files[f"/m/run/checkpoint-{s}/model.bin"]
    repo.packs.seal_all()
    return files


@pytest.mark.parametrize("step", ["condemned", "swept", "packs-unindexed", "repack-built", "repack-switched"])
def test_gc_killed_at_each_step_then_rerun(make_repo, repo_path, gc_env, step):
    repo = make_repo()
    files = _populate(repo)
    p = chunkfs("gc", "--repo", repo_path, "--json", "--grace", "0s", "--keep-last", "2", "--repack-below", "0.99",
                env={"CHUNKFS_GC_HOOK": step}, expect=None)  # fmt: skip
    assert p.returncode == -9, (p.returncode, p.stderr)  # the hook killed it at that step
    for path, data in files.items():  # nothing live is lost, even now
        assert read(repo, path) == data
    result = cli_gc(repo_path, "--keep-last", "2", "--repack-below", "0.99")
    again = cli_gc(repo_path, "--keep-last", "2", "--repack-below", "0.99")
    assert again["packs_deleted"] == 0 and again["packs_repacked"] == 0 and again["chunks_condemned"] == 0
    for path, data in files.items():
        assert read(repo, path) == data
    verify_everything(repo)
    # the rotated checkpoints' unique blocks are gone from disk
    stored = b"".join(p.read_bytes() for p in (repo_path / "hot").rglob("*.pack"))
    assert content(1105)[:4096] not in stored and content(1000)[:4096] not in stored
    assert result is not None


def test_crashed_write_leftovers_are_reclaimed(make_repo, repo_path, gc_env):
    repo = make_repo()
    files = _populate(repo)
    # a crashed writer: chunks flushed and indexed, never committed to any file
    repo.chunks.put(content(777), "/m/run")
    repo.packs.seal_all()
    # an orphan pack object nobody indexed (its id made by this repository, as every pack id is),
    # a scratch file, and a pack object whose name does not say it is ours: never deleted
    orphan = repo_path / "hot" / pack_name(ownership.new_pack_id(repo.index.repo_id))
    foreign = repo_path / "hot" / pack_name(os.urandom(16))
    for p in (orphan, foreign):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * 1000)
        os.utime(p, (time.time() - 10, time.time() - 10))
    (repo_path / "tmp").mkdir(exist_ok=True)
    (repo_path / "tmp" / "leftover.pack").write_bytes(b"y" * 100)
    repo.close()  # its lease goes; the leftovers are nobody's
    result = cli_gc(repo_path, "--repack-below", "0.99")
    assert result["orphans"] == 2
    assert not orphan.exists() and foreign.exists()
    stored = b"".join(p.read_bytes() for p in (repo_path / "hot").rglob("*.pack"))
    assert content(777)[:4096] not in stored
    from chunkfs.repo import Repository

    with Repository(repo_path) as again:
        for path, data in files.items():
            assert read(again, path) == data
        with again.index.read() as t:
            assert t.chunk_get(codec.chunk_id(content(777))) is None


def test_writer_that_deduped_a_condemned_chunk_keeps_it(make_repo):
    """The protocol's core race, deterministically: a writer finds chunk X by dedup, gc condemns X
    (nothing committed references it), gc runs again, the writer commits: X is live and intact."""
    repo = make_repo()
    x = content(42)
    write(repo, "/a/f", x)
    rmtree(repo, "/a/f")
    repo.packs.seal_all()
    import stat as st

    ino, _ = repo.ns.mknod(repo.ns.resolve("/a"), b"g", st.S_IFREG | 0o644, 0, 0)
    fc = repo.file_content(ino)
    fc.write(0, x)  # opens a write window at the current epoch; dedup finds X in the index
    rules = retention.rules_for(repo.settings, keep_within="0s")
    first = gc.run(repo, rules, grace_s=0, repack_below=0.99)
    assert first.chunks_condemned >= 1 and first.chunks_swept == 0 and first.chunks_waiting >= 1
    second = gc.run(repo, rules, grace_s=0, repack_below=0.99)
    assert second.chunks_swept == 0, "swept a chunk an open writer had found"
    repo.commit_file(ino, fc)
    with repo.index.read() as t:
        assert t.chunk_get(codec.chunk_id(x)) is not None
    third = gc.run(repo, rules, grace_s=0, repack_below=0.99)
    assert third.chunks_condemned == 0
    assert read(repo, "/a/g") == x
    assert len(x) == BLOCK


def test_orphan_sweep_spares_new_pack_files_and_files_that_vanish(make_repo, monkeypatch):
    """What the CI once caught: gc listed a writer's brand-new pack file, the writer dropped it, and
    gc failed on 'missing'. And with ``gc.orphan_age`` 0, an unregistered pack file a live writer
    holds is still no orphan, and a writer whose file gc did take in the instant before it locked
    it takes another id instead of writing into a deleted file."""
    from chunkfs.store.maintenance import sweep
    from chunkfs.store.pack import files

    repo = make_repo()
    hot = repo.tiers.backend(Tier.HOT)

    def reclaim() -> int:
        out = sweep.SweepResult()
        sweep.reclaim_orphans(repo.tiers, repo.index, repo.replicas, 0, out)
        return out.orphans_deleted

    # a live writer's pack file the index does not know yet (the writer registers it next)
    pack = ownership.new_pack_id(repo.index.repo_id)
    writer = files.PackWriter(pack, hot.path(pack_name(pack)), "g")
    os.utime(writer.path, (time.time() - 10, time.time() - 10))
    assert reclaim() == 0 and writer.path.exists()
    writer.close()  # its process gave up before registering it: now it is an orphan
    assert reclaim() == 1 and not writer.path.exists()

    # a file listed, then gone before gc looked at it
    listed = hot.list
    ghost = pack_name(ownership.new_pack_id(repo.index.repo_id))
    with monkeypatch.context() as m:
        m.setattr(hot, "list", lambda prefix="": [ghost, *listed(prefix)])
        assert reclaim() == 0

    # gc deletes a new pack file between its creation and its writer's lock
    real_flock = files.fcntl.flock
    taken: list[str] = []

    def flock_after_gc(fd, op):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if not taken and path.endswith(".pack"):
            taken.append(path)
            os.unlink(path)
        return real_flock(fd, op)

    with monkeypatch.context() as m:
        m.setattr(files.fcntl, "flock", flock_after_gc)
        write(repo, "/late/f", content(5, 6))
        repo.packs.seal_all()
    assert taken and not os.path.exists(taken[0])
    assert read(repo, "/late/f") == content(5, 6)
    assert verify_everything(repo) > 0
