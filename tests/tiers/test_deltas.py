"""Delta chunks: a run's checkpoints stored as the XOR against the next checkpoint when the run is
re-encoded on its way to warm (namespace/deltas.py, engine/codec.py), the newest whole, chains
bounded by ``lifecycle.delta_chain``; they read back bit-identical from warm and cold, survive gc
of their bases' versions, index rebuild, recovery from warm alone, replication and fsck; a base goes
cold only with its deltas; a damaged base is an error naming it — never wrong bytes."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import safetensors.numpy
from helpers.cli import cli_json
from helpers.gc import gc_settings
from helpers.tiers import export_and_compare, import_run, repo_on_dirs

from chunkfs import clock, config
from chunkfs.errors import CorruptData
from chunkfs.namespace.views import CommitView
from chunkfs.ops import fsck as fsckop
from chunkfs.ops import gc as gcop
from chunkfs.ops import prefetch as prefetchop
from chunkfs.ops import rebuild as rebuildop
from chunkfs.ops import recover as recoverop
from chunkfs.ops import retention, transfer
from chunkfs.ops import tier as tierop
from chunkfs.repo import Repository
from chunkfs.store.pack.files import pack_name
from chunkfs.types import ChunkKind, Tier, flags_kind

STEPS = (100, 200, 300, 400)
DAY = 86400


def _bf16(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def _training_run(root, steps=STEPS):
    """A run of bf16 checkpoints a few small optimizer steps apart (every weight moves a little),
    a frozen tensor (the same bytes each time: dedup) and a random one (nothing in common)."""
    rng = np.random.default_rng(0)
    weights = {f"layers.{i}.weight": rng.standard_normal((256, 1024)).astype(np.float32) * 0.02 for i in range(3)}
    frozen = _bf16(rng.standard_normal((64, 1024)))
    for step in steps:
        d = root / "run1" / f"checkpoint-{step}"
        d.mkdir(parents=True)
        tensors = {name: _bf16(w) for name, w in weights.items()}
        tensors["frozen.weight"] = frozen
        tensors["noise"] = rng.integers(0, 1 << 16, (64, 1024), dtype=np.uint16)
        safetensors.numpy.save_file(tensors, str(d / "model.safetensors"))
        for w in weights.values():
            w += rng.standard_normal(w.shape).astype(np.float32) * 2e-4
    return root / "run1"


def _repo(tmp_path, **lifecycle) -> Repository:
    return repo_on_dirs(tmp_path, gc_settings(), **lifecycle)  # gc with no grace: sweeps at once


def _to_warm(repo, tmp_path):
    src = _training_run(tmp_path / "src")
    import_run(repo, src, "/m/run1")
    tierop.complete(repo, "/m/run1")
    outcome = tierop.apply(repo, tierop.plan(repo))
    with repo.index.read() as t:
        assert outcome.written["warm"]["deltas"] == sum(1 for _ in t.deltas()), "the outcome counts the deltas"
    return src


def _chunks_of(repo, path: str) -> list[bytes]:
    return [e.chunk for e in repo.ns.extents(repo.ns.resolve(path))]


def _deltas(repo) -> dict[bytes, bytes]:
    with repo.index.read() as t:
        rows = dict(t.deltas())
        kinds = {c: flags_kind(loc.flags) for c, loc in t.chunks()}
    assert {c for c, k in kinds.items() if k == ChunkKind.DELTA} == set(rows), "deltas lists every delta chunk"
    assert all(b in kinds for b in rows.values()), "every base is in the index"
    return rows


def _check(repo, src, tmp_path, name: str) -> None:
    repo.drop_caches()
    export_and_compare(repo, src, "/m/run1", tmp_path / name)
    report = fsckop.fsck(repo)
    assert report.problems == []


def _depth(rows: dict[bytes, bytes], chunk: bytes) -> int:
    n = 0
    while chunk in rows:
        chunk, n = rows[chunk], n + 1
    return n


def test_older_checkpoints_are_stored_as_deltas_of_the_newer_and_read_back_from_warm_and_cold(tmp_path):
    with _repo(tmp_path / "plain", delta_chain=0) as plain:
        _to_warm(plain, tmp_path / "plain")
        assert _deltas(plain) == {}
        with plain.index.read() as t:
            without = sum(i.size for _, i in t.packs())
    with _repo(tmp_path) as repo:
        src = _to_warm(repo, tmp_path)
        rows = _deltas(repo)
        newest = set(_chunks_of(repo, "/m/run1/checkpoint-400/model.safetensors"))
        assert not newest & set(rows), "the newest checkpoint is stored whole"
        for step in (100, 200, 300):
            chunks = _chunks_of(repo, f"/m/run1/checkpoint-{step}/model.safetensors")
            assert sum(c in rows for c in chunks) >= 3, f"checkpoint-{step}: its trained weights are deltas"
            assert max(_depth(rows, c) for c in chunks) == 400 // 100 - step // 100
        with repo.index.read() as t:
            with_deltas = sum(i.size for _, i in t.packs())
        # measured (seeded): 0.64 of the same run re-encoded without deltas
        assert with_deltas < 0.75 * without, (with_deltas, without)
        _check(repo, src, tmp_path, "warm")
        drill = cli_json("drill", "/m/run1", "--from", "warm", "--repo", tmp_path / "repo")
        assert drill["verdict"] == "pass" and drill["problems"] == [], drill
        (run,) = cli_json("du", "/m/run1", "--repo", tmp_path / "repo")
        deltas = [row for name, row in run["encodings"].items() if name.startswith("delta_")]
        raw, stored = sum(r["raw"] for r in deltas), sum(r["stored"] for r in deltas)
        assert sum(r["chunks"] for r in deltas) == len(rows) and stored < 0.5 * raw, run["encodings"]

        clock.advance(40 * DAY)
        tierop.apply(repo, tierop.plan(repo))
        with repo.index.read() as t:
            assert {i.tier for _, i in t.packs()} == {Tier.COLD}
        assert _deltas(repo) == rows, "deltas stay deltas on their way to cold"
        _check(repo, src, tmp_path, "cold")


def test_every_nth_checkpoint_from_the_newest_is_whole(tmp_path):
    with _repo(tmp_path, delta_chain=2) as repo:
        src = _to_warm(repo, tmp_path)
        rows = _deltas(repo)
        depth = {s: max(_depth(rows, c) for c in _chunks_of(repo, f"/m/run1/checkpoint-{s}/model.safetensors"))
                 for s in STEPS}  # fmt: skip
        assert depth == {400: 0, 300: 1, 200: 0, 100: 1}
        _check(repo, src, tmp_path, "out")


def test_gc_keeps_a_base_its_version_no_longer_needs_until_no_delta_needs_it(tmp_path):
    with _repo(tmp_path) as repo:
        src = _to_warm(repo, tmp_path)
        rows = _deltas(repo)
        bases = set(_chunks_of(repo, "/m/run1/checkpoint-400/model.safetensors")) & set(rows.values())
        assert bases
        for step in (300, 400):  # the newest checkpoints go: every base of the older ones with them
            tierop_rm(repo, f"/m/run1/checkpoint-{step}")
        gcop.run(repo, retention.rules_for(repo.settings, keep_within="0s"))
        with repo.index.read() as t:
            assert all(t.chunk_get(b) is not None for b in bases), "bases of live deltas stay"
        for step in (300, 400):
            (src / f"checkpoint-{step}" / "model.safetensors").unlink()
            (src / f"checkpoint-{step}").rmdir()
        _check(repo, src, tmp_path, "after-gc")

        for step in (100, 200):
            tierop_rm(repo, f"/m/run1/checkpoint-{step}")
        gcop.run(repo, retention.rules_for(repo.settings, keep_within="0s"))
        with repo.index.read() as t:
            assert t.chunk_count() == 0 and dict(t.deltas()) == {}, "nothing needs them: all gone"


def test_a_delta_resurrected_by_a_commit_brings_its_bases_back(tmp_path):
    """A writer that found a delta by dedup before gc condemned it commits a reference: the
    delta comes back into ``chunks``, and so does every base in its chain (docs/gc.md)."""
    with _repo(tmp_path) as repo:
        _to_warm(repo, tmp_path)
        rows = _deltas(repo)
        delta = next(c for c in rows if _depth(rows, c) >= 2)
        chain = [rows[delta], rows[rows[delta]]]
        with repo.index.write() as t:
            for c in (delta, *chain):
                t.condemn(c, t.chunk_get(c), t.gc_epoch_bump(), clock.now_ns())
        with repo.index.write() as t:
            assert t.resurrect([delta]) == 3
            assert all(t.chunk_get(c) is not None for c in (delta, *chain))


def tierop_rm(repo, path: str) -> None:
    """``rm -r`` of a checkpoint directory (one file in it)."""
    d = repo.ns.resolve(path)
    repo.ns.unlink(d, b"model.safetensors")
    parent, name = path.rsplit("/", 1)
    repo.ns.rmdir(repo.ns.resolve(parent), name.encode())


def test_a_damaged_base_is_an_error_naming_it_never_wrong_bytes(tmp_path):
    with _repo(tmp_path) as repo:
        _to_warm(repo, tmp_path)
        rows = _deltas(repo)
        delta, base = next(iter(rows.items()))
        _damage(tmp_path, repo, base)
        with pytest.raises(CorruptData, match=f"delta of chunk {base.hex()}"):
            repo.chunks.get(delta, 0)
        report = fsckop.fsck(repo)
        bad = {p.chunk: p for p in report.problems if p.chunk}
        assert base.hex() in bad and delta.hex() in bad, report.problems
        assert f"its base {base.hex()}" in bad[delta.hex()].message


def test_index_rebuild_finds_every_delta_and_its_base_again(tmp_path):
    with _repo(tmp_path) as repo:
        src = _to_warm(repo, tmp_path)
        rows = _deltas(repo)
        assert rows
        with repo.index.write() as t:
            t.clear_chunk_index()
        rebuildop.rebuild(repo)
        assert _deltas(repo) == rows
        _check(repo, src, tmp_path, "rebuilt")


def test_recover_from_warm_alone_finds_the_deltas_written_after_the_backup(tmp_path):
    with _repo(tmp_path) as repo:
        src = _training_run(tmp_path / "src")
        import_run(repo, src, "/m/run1")
        repo.packs.seal_all()
        repo.uploader.drain()
        repo.metabackup.run()  # knows the raw hot packs (and their warm copies) only
        tierop.complete(repo, "/m/run1")
        tierop.apply(repo, tierop.plan(repo))  # re-encoded with deltas, the packs of the backup deleted
        rows = _deltas(repo)
        assert rows
    shutil.rmtree(tmp_path / "repo")
    recoverop.recover(str(tmp_path / "warm"), tmp_path / "new")
    with Repository(tmp_path / "new") as new:
        assert _deltas(new) == rows
        export_and_compare(new, src, "/m/run1", tmp_path / "out")
        assert fsckop.fsck(new).problems == []


def test_a_delta_whose_base_gc_took_meanwhile_stays_whole(tmp_path):
    """Deltas are planned and encoded before the switch transaction: gc may condemn and sweep a
    base in between. The switch then keeps the chunk whole where it was; nothing is lost."""
    with _repo(tmp_path) as repo:
        src = _training_run(tmp_path / "src")
        import_run(repo, src, "/m/run1")
        tierop.complete(repo, "/m/run1")
        bases_400 = set(_chunks_of(repo, "/m/run1/checkpoint-400/model.safetensors"))
        transform, done = repo.tiers.transform, []

        def encode_then_gc(chunk, stored, raw_len, flags, level, base):
            out = transform(chunk, stored, raw_len, flags, level, base)
            if base in bases_400 and not done:  # the base's checkpoint deleted, gc condemns and sweeps it
                done.append(base)
                tierop_rm(repo, "/m/run1/checkpoint-400")
                now = clock.now_ns()
                gcop._condemn(repo, retention.rules_for(repo.settings, keep_within="0s"), now, False, gcop.GcResult())
                gcop._sweep_condemned(repo, now, 0, False, gcop.GcResult())
            return out

        repo.tiers.transform = encode_then_gc
        tierop.apply(repo, tierop.plan(repo))
        assert done, "a delta of checkpoint-400 was encoded"
        rows = _deltas(repo)
        assert rows and not set(rows.values()) & bases_400, "no delta of a base that is gone"
        (src / "checkpoint-400" / "model.safetensors").unlink()
        (src / "checkpoint-400").rmdir()
        _check(repo, src, tmp_path, "out")


def test_log_shows_per_version_what_is_stored_and_how_much_as_a_delta(tmp_path):
    with _repo(tmp_path) as repo:
        _to_warm(repo, tmp_path)
    for step, as_delta in ((100, True), (400, False)):
        v = cli_json("log", f"/m/run1/checkpoint-{step}/model.safetensors", "--repo", tmp_path / "repo")[0]
        assert 0 < v["stored_bytes"] < v["size"]
        assert (v["delta_bytes"] >= 3 * (256 * 1024 * 2) * 0.9) is as_delta, v
        assert as_delta or v["delta_bytes"] == 0


def test_a_file_saved_over_and_over_keeps_its_older_versions_as_deltas(tmp_path):
    """No step directories: ``latest/model.safetensors`` rewritten at every save. Its older
    versions (version history) are stored as deltas of the next one, and read back as they were."""
    with _repo(tmp_path) as repo:
        src = _training_run(tmp_path / "src")
        commits = {}
        for step in STEPS:
            transfer.import_tree(repo, src / f"checkpoint-{step}" / "model.safetensors", "/m/job/latest/model.safetensors")
            commits[step] = repo.history.last_commit()
        tierop.complete(repo, "/m/job/latest")
        tierop.apply(repo, tierop.plan(repo))
        rows = _deltas(repo)
        assert not set(_chunks_of(repo, "/m/job/latest/model.safetensors")) & set(rows), "the newest is whole"
        assert len(rows) >= 3 * 3, "the trained weights of every older version are deltas"
        repo.drop_caches()
        for step, commit in commits.items():
            out = tmp_path / f"v{step}"
            transfer.export_tree(repo, "/m/job/latest", out, view=CommitView(repo.history, commit))
            assert (out / "model.safetensors").read_bytes() == (src / f"checkpoint-{step}" / "model.safetensors").read_bytes()
        assert fsckop.fsck(repo).problems == []


def test_a_base_goes_cold_only_with_the_deltas_that_need_it(tmp_path):
    """A run goes cold by pack age: when the pack of a base is old enough and the pack of one of
    its deltas is not yet, the delta's pack goes with it (an archive tier's object needs a thaw
    before it reads: a warm delta must not wait on a cold base)."""
    with _repo(tmp_path) as repo:
        src = _to_warm(repo, tmp_path)
        rows = _deltas(repo)
        with repo.index.read() as t:
            where = {c: t.chunk_get(c).pack for c in {*rows, *rows.values()}}
            packs = dict(t.packs())
        base_pack = next(where[b] for d, b in rows.items() if where[d] != where[b])
        clock.advance(40 * DAY)
        with repo.index.write() as t:  # every other pack made 10 days ago: idle, but too young to go cold
            for p, info in packs.items():
                if p != base_pack:
                    t.pack_put(p, dataclasses.replace(info, created_ns=clock.now_ns() - 10 * DAY * 10**9))
        (action,) = tierop.plan(repo)
        needed = {where[d] for d, b in rows.items() if where[b] == base_pack}
        assert base_pack in action.packs and needed <= set(action.packs), "its deltas' packs go too"
        tierop.apply(repo, [action])
        with repo.index.read() as t:
            for d, b in rows.items():
                base_tier, delta_tier = t.pack_get(t.chunk_get(b).pack).tier, t.pack_get(t.chunk_get(d).pack).tier
                assert not (base_tier == Tier.COLD and delta_tier == Tier.WARM), "a warm delta of a cold base"
        _check(repo, src, tmp_path, "out")


def _repo_with_replica(tmp_path) -> Repository:
    repo = _repo(tmp_path)
    repo.close()
    settings = dataclasses.replace(
        repo.settings, replication=config.ReplicationSettings(replicas=(str(tmp_path / "replica"),), interval=0)
    )
    (tmp_path / "repo" / config.CONFIG_NAME).write_text(config.render(settings))
    return Repository(tmp_path / "repo")


def _damage(tmp_path, repo, chunk: bytes) -> None:
    """Flip a byte in the middle of ``chunk``'s stored bytes in its warm pack."""
    with repo.index.read() as t:
        loc = t.chunk_get(chunk)
    path = tmp_path / "warm" / pack_name(loc.pack)
    data = bytearray(path.read_bytes())
    data[loc.offset + loc.stored_len // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    repo.drop_caches()


def test_replicas_copy_deltas_and_serve_a_damaged_base(tmp_path):
    with _repo_with_replica(tmp_path) as repo:
        src = _to_warm(repo, tmp_path)
        rows = _deltas(repo)
        with repo.index.read() as t:
            assert repo.replicas.run_once() == sum(1 for _ in t.packs()), "every pack replicated (deltas verified)"
        _damage(tmp_path, repo, next(iter(rows.values())))  # a base's home copy
        export_and_compare(repo, src, "/m/run1", tmp_path / "out")  # the base comes from the replica


def test_fsck_checks_and_repairs_a_base_only_deltas_need(tmp_path):
    """The newest checkpoint deleted and gc'd: its chunks stay as bases of the older ones'
    deltas, referenced by no version. fsck checks them all the same, names the files whose
    deltas need a damaged one, and repairs it from a replica."""
    with _repo_with_replica(tmp_path) as repo:
        src = _to_warm(repo, tmp_path)
        rows = _deltas(repo)
        bases = set(_chunks_of(repo, "/m/run1/checkpoint-400/model.safetensors")) & set(rows.values())
        tierop_rm(repo, "/m/run1/checkpoint-400")
        gcop.run(repo, retention.rules_for(repo.settings, keep_within="0s"))
        repo.replicas.run_once()
        base = next(iter(bases))
        _damage(tmp_path, repo, base)
        report = fsckop.fsck(repo, repair=True)
        (problem,) = [p for p in report.problems if p.chunk == base.hex()]
        assert problem.kind == "bad_chunk" and problem.repaired, report.problems
        assert any(a.path.startswith("/m/run1/checkpoint-300") for a in report.affected), report.affected
        (src / "checkpoint-400" / "model.safetensors").unlink()
        (src / "checkpoint-400").rmdir()
        _check(repo, src, tmp_path, "out")


def test_prefetch_stages_the_bases_too(tmp_path):
    """An inference node stages an older checkpoint: its deltas read through their bases, so those
    are staged (and pinned) with it; the checkpoint then reads with the warm tier gone."""
    with _repo(tmp_path) as repo:
        src = _to_warm(repo, tmp_path)
        repo.drop_caches()
        result = prefetchop.prefetch(repo, "/m/run1/checkpoint-100", pin=True)
        files = _chunks_of(repo, "/m/run1/checkpoint-100/model.safetensors")
        assert result.chunks > len(set(files)), "the bases of its deltas are staged too"
        repo.chunks.cache.clear()
        (tmp_path / "warm").rename(tmp_path / "warm-gone")
        out = tmp_path / "out"
        out.mkdir()
        transfer.export_tree(repo, "/m/run1/checkpoint-100", out)
        assert (out / "checkpoint-100" / "model.safetensors").read_bytes() == (
            src / "checkpoint-100" / "model.safetensors"
        ).read_bytes()
        (tmp_path / "warm-gone").rename(tmp_path / "warm")


def test_fsck_repair_reindexes_a_lost_delta_with_its_base(tmp_path):
    with _repo(tmp_path) as repo:
        src = _to_warm(repo, tmp_path)
        rows = _deltas(repo)
        lost = next(iter(rows))
        with repo.index.write() as t:  # the index lost one delta's entry (and so its base's row)
            t.chunk_delete(lost)
        report = fsckop.fsck(repo, repair=True)
        assert report.reindexed_chunks == 1, report.problems
        assert _deltas(repo) == rows
        _check(repo, src, tmp_path, "out")
