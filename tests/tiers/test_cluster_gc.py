"""gc in a repository shared by several nodes (docs/multinode.md, "gc across nodes"), driven
through the library on one moto server: one node's gc publishes a gc entry, every node applies
it and says in its heartbeat when it is ready, the gc node then publishes a sweep, and each node
deletes its own emptied packs. Nodes without a mount take part through ``sync`` (what ``chunkfs
sync`` and a mount's sync thread do); the mount-level test is in tests/fuse/test_cluster_mounts.py."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from helpers.cli import chunkfs
from helpers.clusternodes import export, gc_on, import_random, nodes, sync, sync_all

from chunkfs import clock
from chunkfs.cluster import log as sharedlog
from chunkfs.cluster.entries import Entry, encode
from chunkfs.errors import ConfigError, Conflict, CorruptData, NotFound
from chunkfs.ops import cluster as clusterop
from chunkfs.ops import gc, retention, shared_gc, tier, transfer
from chunkfs.ops.fsck import fsck
from chunkfs.repo import Repository
from chunkfs.store.maintenance import metabackup
from chunkfs.store.pack.files import pack_name
from chunkfs.types import Tier


def _warm_packs(path: Path) -> set[str]:
    with Repository(path, writable=False) as repo:
        return set(repo.tiers.backend(Tier.WARM).list("packs/"))


def _check(paths, files: dict[str, bytes], tmp_path: Path) -> None:
    for node in paths:
        for name, data in files.items():
            out = export(node, name, tmp_path / f"out-{node.name}-{name.strip('/').replace('/', '-')}")
            assert out.read_bytes() == data, f"{name} on {node.name}"
        with Repository(node, writable=False) as repo:
            report = fsck(repo)
            assert report.ok, (node.name, report.as_dict())
            assert repo.tiers.audit() == [], node.name


def test_gc_on_one_node_reclaims_what_no_node_needs_on_every_node(tmp_path, moto_server):
    _, (a, b, c) = nodes(tmp_path, moto_server.endpoint, 3)
    with Repository(a) as repo:
        import_random(repo, tmp_path, "/run/gone.bin", 400_000)
    with Repository(a) as repo:  # another pack
        kept = import_random(repo, tmp_path, "/run/kept.bin", 400_000)
    sync_all(a, b, c)
    before = _warm_packs(a)
    with Repository(b) as repo:  # removed on another node than the one that wrote it
        repo.ns.unlink(repo.ns.resolve("/run"), b"gone.bin")
    sync_all(b, a, c)

    result = gc_on(c, lambda: sync_all(a, b), keep_within="0s")
    assert {d["path"] for d in result.dropped} == {"/run/gone.bin", "/run/kept.bin"}, result.dropped  # old ones
    assert result.chunks_condemned >= 1
    assert result.chunks_swept == result.chunks_condemned, result.to_json()
    assert result.cluster["sweep_entry"] > result.cluster["gc_entry"]
    sync_all(a, b)  # a applies the sweep: the pack of gone.bin is a's, and a deletes it …
    assert len(_warm_packs(a)) == len(before), "… on warm once every member has applied the sweep"
    sync_all(c, a)
    after = _warm_packs(a)
    assert len(after) == len(before) - 1, "the emptied pack left the warm tier"
    for node in (a, b, c):
        with Repository(node, writable=False) as repo:
            with pytest.raises(NotFound):  # every node dropped its versions, and its name's history
                repo.history.log("/run/gone.bin")
            with repo.index.read() as t:
                assert t.condemned_count() == 0, node.name
    _check((a, b, c), {"/run/kept.bin": kept}, tmp_path)


def test_packs_a_sweep_left_sparse_are_repacked_by_their_node_and_the_others_follow(tmp_path, moto_server):
    _, (a, b, c) = nodes(tmp_path, moto_server.endpoint, 3)
    src = tmp_path / "src"
    src.mkdir()
    (src / "gone.bin").write_bytes(os.urandom(600_000))
    (src / "kept.bin").write_bytes(kept := os.urandom(200_000))
    with Repository(a) as repo:  # one pack holds both
        transfer.import_tree(repo, src, "/run")
        with repo.index.read() as t:
            (old,) = [p for p, _ in t.packs()]
    sync_all(a, b, c)
    with Repository(b) as repo:
        repo.ns.unlink(repo.ns.resolve("/run"), b"gone.bin")
    sync_all(b, a, c)
    gc_on(c, lambda: sync_all(a, b), keep_within="0s")
    sync_all(a, b)  # a applies the sweep: its pack is a quarter live
    with Repository(b) as repo:  # a's pack, foreign here: b only follows
        repo.repack_after_sweep()
        with repo.index.read() as t:
            assert t.pack_get(old) is not None and t.retiring() == {}
    with Repository(a) as repo:
        assert repo.repack_after_sweep()
        assert not repo.repack_after_sweep(), "done until the next sweep"
        with repo.index.read() as t:
            assert t.pack_get(old) is None and set(t.retiring()) == {old}
            (new,) = [p for p, _ in t.packs()]
            assert t.pack_get(new).size < 400_000
    assert pack_name(old) in _warm_packs(a), "b and c still read it there"
    _check((b, c), {"/run/kept.bin": kept}, tmp_path)
    sync_all(a, b, c)  # a publishes the relocate change (once its new pack is on warm); b and c apply it
    sync_all(a)  # every member has: a deletes the old object
    assert pack_name(old) not in _warm_packs(a)
    for node in (b, c):
        with Repository(node, writable=False) as repo, repo.index.read() as t:
            assert t.pack_get(old) is None and t.pack_get(new) is not None, node.name
    _check((a, b, c), {"/run/kept.bin": kept}, tmp_path)


def test_a_chunk_another_node_still_needs_is_kept_everywhere(tmp_path, moto_server):
    """Node b tagged a past commit (such a tag is b's own: commit numbers are each node's): its
    version survives c's gc, and its chunks are not swept although c and a condemned them —
    b's keep resurrected them."""
    _, (a, b, c) = nodes(tmp_path, moto_server.endpoint, 3)
    with Repository(a) as repo:
        data = import_random(repo, tmp_path, "/run/x.bin", 300_000)
    sync_all(a, b, c)
    with Repository(b) as repo:
        commit = repo.history.tag("before-cleanup", repo.history.last_commit())
    with Repository(a) as repo:
        repo.ns.unlink(repo.ns.resolve("/run"), b"x.bin")
    sync_all(a, b, c)
    before = _warm_packs(a)

    result = gc_on(c, lambda: sync_all(a, b), keep_within="0s")
    assert result.chunks_condemned >= 1 and result.chunks_swept == 0, result.to_json()
    sync_all(a, b, c)
    assert _warm_packs(a) == before
    with Repository(b, writable=False) as repo:
        version = repo.history.resolve_at("/run/x.bin", commit)
        assert repo.content_of(repo.history.extents(version)).read(0, len(data)) == data
    for node in (a, c):
        with Repository(node, writable=False) as repo, repo.index.read() as t:
            assert t.condemned_count() == 0, f"{node.name}: b's keep resurrected them"


def test_a_write_that_found_condemned_chunks_by_dedup_holds_the_sweep_back(tmp_path, moto_server, monkeypatch):
    """Node a starts writing a file whose bytes are a deleted file's (dedup finds its chunks) before
    c's gc: a is not ready while that file is open, so the sweep waits; once a commits and
    publishes, c sees the reference, and the bytes survive on every node."""
    _, (a, b, c) = nodes(tmp_path, moto_server.endpoint, 3)
    with Repository(a) as repo:
        data = import_random(repo, tmp_path, "/run/old.bin", 300_000)
    sync_all(a, b, c)
    with Repository(b) as repo:
        repo.ns.unlink(repo.ns.resolve("/run"), b"old.bin")
    sync_all(b, a, c)
    monkeypatch.setattr(shared_gc, "SWEEP_WAIT", 4.0)

    with Repository(a) as writer:
        ino, _ = writer.ns.mknod(writer.ns.resolve("/run"), b"new.bin", stat.S_IFREG | 0o644, 0, 0)
        content = writer.file_content(ino)
        content.write(0, data)  # found by dedup: nothing stored again; the write window stays open
        assert writer.chunks.new_chunks == 0

        def rounds() -> None:  # a's mount would do this once a second
            writer.cluster.sync()
            writer.cluster.heartbeat()
            sync(b)

        first = gc_on(c, rounds, keep_within="0s")
        assert first.chunks_condemned >= 1 and first.chunks_swept == 0, first.to_json()
        assert any("not ready" in w for w in first.cluster["waiting_for"]), first.to_json()

        writer.commit_file(ino, content)  # resurrects them here, journals the content
        writer.packs.seal_all()
        writer.uploader.drain()
        second = gc_on(c, rounds, keep_within="0s")
    assert second.chunks_swept == 0, "c saw a's reference before sweeping"
    sync_all(a, b, c)
    _check((a, b, c), {"/run/new.bin": data}, tmp_path)


def test_one_gc_at_a_time_across_nodes_and_a_dead_holders_lease_expires(tmp_path, moto_server, monkeypatch):
    _, (a, b) = nodes(tmp_path, moto_server.endpoint)
    with Repository(a, writable=False) as ra, Repository(b, writable=False) as rb:
        shared_a, shared_b = ra.cluster.shared, rb.cluster.shared
        with shared_a.lease("a", "gc"), pytest.raises(Conflict, match="holds the cluster's maintenance lease"):
            shared_b.lease("b", "gc").__enter__()
        with shared_b.lease("b", "gc"):  # released: free again
            pass
        monkeypatch.setattr(sharedlog, "LEASE_TTL", 0.5)
        dead = contextlib.ExitStack()
        held = dead.enter_context(shared_a.lease("a", "gc"))  # never released: its holder "died"
        time.sleep(0.7)
        with shared_b.lease("b", "gc"), pytest.raises(Conflict, match="taken by another node"):
            held.renew()
        dead.pop_all()


def test_a_gc_waits_for_a_metadata_backup_that_holds_the_lease(tmp_path, moto_server):
    """A backup holds the lease for seconds: a gc (or an explicit backup) waits for it, a
    periodic backup (``wait=False``) does not."""
    _, (a, b) = nodes(tmp_path, moto_server.endpoint)
    with Repository(a, writable=False) as ra, Repository(b, writable=False) as rb:
        shared_a, shared_b = ra.cluster.shared, rb.cluster.shared
        backup = shared_a.lease("a", sharedlog.BACKUP)
        backup.__enter__()
        with pytest.raises(Conflict, match="metadata backup on node a"):
            shared_b.lease("b", sharedlog.BACKUP, wait=False).__enter__()
        timer = threading.Timer(2.0, backup.__exit__, (None, None, None))
        timer.start()
        t0 = time.monotonic()
        with shared_b.lease("b", "gc") as held:
            assert held.what == "gc" and time.monotonic() - t0 >= 1.5, "it waited for the backup to end"
        timer.join()


def test_sync_publishes_and_says_it_skipped_the_backup_while_a_gc_holds_the_lease(tmp_path, moto_server):
    _, (a, b) = nodes(tmp_path, moto_server.endpoint)
    with Repository(b) as repo:
        data = import_random(repo, tmp_path, "/f.bin", 50_000)
    notices: list[str] = []
    with Repository(a, writable=False) as ra, ra.cluster.shared.lease(ra.cluster.node, "gc"):
        result = tier.sync(b, notice=notices.append)
    assert result.published >= 1, result  # (changes: the directory entry and the file's content)
    assert any("metadata backup skipped" in n and "gc on node" in n for n in notices), notices
    sync(a)
    _check((a,), {"/f.bin": data}, tmp_path)


def test_gc_dry_run_in_a_shared_repository_changes_nothing(tmp_path, moto_server):
    _, (a, _b) = nodes(tmp_path, moto_server.endpoint)
    with Repository(a) as repo:
        import_random(repo, tmp_path, "/f.bin", 100_000)
        repo.ns.unlink(1, b"f.bin")
        result = gc.run(repo, retention.rules_for(repo.settings, keep_within="0s"), dry_run=True)
        assert {d["path"] for d in result.dropped} == {"/f.bin"} and result.chunks_condemned >= 1
        assert not result.cluster
        with repo.index.read() as t:
            assert t.condemned_count() == 0 and len(list(t.inohist_all())) >= 1


def test_a_member_that_never_synced_holds_the_sweep_back_until_forgotten(tmp_path, moto_server, monkeypatch):
    """A node is a member from its join on (its heartbeat is written then): its unpublished
    changes may name chunks a gc elsewhere condemns, so the sweep waits for it."""
    _, (a, b) = nodes(tmp_path, moto_server.endpoint)
    with Repository(b, writable=False) as repo:
        silent = repo.cluster.node
    with Repository(a) as repo:
        import_random(repo, tmp_path, "/f.bin", 100_000)
        repo.ns.unlink(1, b"f.bin")
    monkeypatch.setattr(shared_gc, "SWEEP_WAIT", 2.0)
    result = gc_on(a, lambda: None, keep_within="0s")
    assert result.chunks_condemned >= 1 and result.chunks_swept == 0, result.to_json()
    assert any(silent in why for why in result.cluster["waiting_for"]), result.to_json()

    # the machine is lost for good: forget it, and the next gc sweeps without it
    out = json.loads(chunkfs("forget-node", "--repo", a, silent, "--json").stdout)
    result = gc_on(a, lambda: None, keep_within="0s")
    assert result.chunks_swept >= 1 and not result.cluster.get("waiting_for"), result.to_json()
    # an entry it wrote after the forget (it had not seen it) is ignored by every node: a fence
    late = encode(Entry(silent, 0, (1, 1), [{"op": "create", "path": "/ghost", "mode": 0o100644, "uid": 0,
                                                "gid": 0, "rdev": 0, "versioned": True}]))  # fmt: skip
    sync(a)
    with Repository(a, writable=False) as repo:
        with repo.index.read() as t:
            position = t.applied_get() + 1
        assert position > out["log_position"] and repo.cluster.shared.append(position, late)
    sync(a)
    with Repository(a, writable=False) as repo:
        with repo.index.read() as t:
            assert t.applied_get() == position, "a read past the entry"
        with pytest.raises(NotFound):
            repo.ns.resolve("/ghost")
    with pytest.raises(ConfigError, match="was removed from the shared repository"):
        sync(b)  # and the forgotten node, if it runs again, stops


def test_the_packs_of_a_forgotten_member_become_the_forgetting_nodes_and_its_gc_deletes_them(tmp_path, moto_server):
    """Only a pack's own node deletes it; once that node is forgotten, the node that forgot it
    owns its packs (every node marks them so) and deletes them from warm when they empty."""
    _, (a, b, c) = nodes(tmp_path, moto_server.endpoint, 3)
    with Repository(a) as repo:
        import_random(repo, tmp_path, "/gone.bin", 300_000)
        lost = repo.cluster.node
    with Repository(a) as repo:  # another pack
        kept = import_random(repo, tmp_path, "/kept.bin", 300_000)
    sync_all(a, b, c)
    with Repository(c, writable=False) as repo, repo.index.read() as t:
        theirs = set(t.foreign_packs(lost))
    assert len(theirs) == 2
    chunkfs("forget-node", "--repo", b, lost, "--json")
    sync_all(b, c)
    with Repository(b, writable=False) as repo, repo.index.read() as t:
        assert not any(t.foreign(p) for p in theirs), "b adopted them"
    with Repository(c, writable=False) as repo, repo.index.read() as t:
        assert {t.foreign(p) for p in theirs} == {_node(b)}, "c marks them as b's"
    before = _warm_packs(b)
    with Repository(c) as repo:
        repo.ns.unlink(1, b"gone.bin")
    sync_all(c, b)
    result = gc_on(c, lambda: sync_all(b), keep_within="0s")
    assert result.chunks_swept >= 1, result.to_json()
    sync_all(b, c, b)  # b applies the sweep and deletes the emptied pack it adopted (once c has too)
    assert len(_warm_packs(b)) == len(before) - 1, "the forgotten node's emptied pack left the warm tier"
    _check((b, c), {"/kept.bin": kept}, tmp_path)


def test_an_unpublished_change_whose_version_a_gc_dropped_is_still_published(tmp_path, moto_server):
    """b saved /f.bin with the same bytes a had published, then saved it again — both unpublished
    — when c's gc dropped that content's versions: b condemned its chunks, and still publishes
    its first save (from where the condemned bytes are); every node ends with b's last save."""
    _, (a, b, c) = nodes(tmp_path, moto_server.endpoint, 3)
    first = os.urandom(150_000)
    (tmp_path / "first").write_bytes(first)
    with Repository(a) as repo:
        transfer.import_tree(repo, tmp_path / "first", "/f.bin")
    sync_all(a, b, c)
    with Repository(b) as repo:  # not published yet: the same content again, then another
        transfer.import_tree(repo, tmp_path / "first", "/f.bin")
        last = import_random(repo, tmp_path, "/f.bin", 120_000)
    with Repository(a) as repo:  # a replaces it: a's first save is an old version everywhere but b
        import_random(repo, tmp_path, "/f.bin", 130_000)
    sync_all(a, c)
    gc_on(c, lambda: sync_all(a, b), keep_within="0s")
    sync_all(b, a, c)
    with Repository(b, writable=False) as repo:
        assert repo.cluster.pending()[0] == 0, repo.cluster.status(members=False)
    _check((a, b, c), {"/f.bin": last}, tmp_path)


def test_gc_truncates_the_log_every_member_applied_and_joins_start_from_the_backup(tmp_path, moto_server):
    url, (a, b) = nodes(tmp_path, moto_server.endpoint)
    files = {}
    for i in range(3):
        with Repository(a) as repo:
            files[f"/f{i}.bin"] = import_random(repo, tmp_path, f"/f{i}.bin", 50_000)
        sync(a)  # an entry each, then a metadata backup
    sync_all(b, a)  # every heartbeat names the position the node applied
    result = gc_on(b, lambda: sync_all(a))
    truncated = result.cluster["log_truncated"]
    assert truncated["entries"] >= 3, result.to_json()
    backend = moto_server.backend(url)
    assert not backend.exists("cluster/log/00000000000000000001")

    late, _ = clusterop.join(tmp_path / "late", url, endpoint_url=moto_server.endpoint)
    late.close()
    _check((tmp_path / "late",), files, tmp_path)

    with Repository(b) as repo, repo.index.write() as t:
        t.applied_put(0)  # an index older than the log (restored from an old copy, say)
    with pytest.raises(CorruptData, match=f"starts at entry {truncated['first']}"):
        sync(b)


def test_any_member_backs_up_and_joins_start_from_the_backup_that_holds_the_most_of_the_log(tmp_path, moto_server):
    """The creating node is lost for good: the other member's backups (one at a time, under the
    maintenance lease) let the log be truncated and a new node start from them. Newer backups
    that hold less of the log do not displace the one a join starts from, not even when
    pruning leaves only ``backup.keep`` others."""
    url, (a, b) = nodes(tmp_path, moto_server.endpoint)
    backend = moto_server.backend(url)
    files = {}
    with Repository(a) as repo:
        files["/a.bin"] = import_random(repo, tmp_path, "/a.bin", 60_000)
        lost = repo.cluster.node
    sync_all(a, b)
    chunkfs("forget-node", "--repo", b, lost, "--json")
    with Repository(b) as repo:
        files["/b.bin"] = import_random(repo, tmp_path, "/b.bin", 60_000)
    sync(b)
    done = json.loads(chunkfs("backup", "--repo", str(b), "--json").stdout)
    status = json.loads(chunkfs("status", "--repo", str(b), "--json").stdout)["cluster"]
    assert status["join_point"]["backup"] == done["name"], status
    assert f"after log entry {status['join_point']['position']}" in chunkfs("status", "--repo", str(b)).stdout
    with Repository(b) as repo:
        with repo.index.read() as t:
            applied = t.applied_get()
        position, name, _ = metabackup.join_point(backend, repo.index.repo_id)
        assert (position, name) == (applied, done["name"]), "a member's backup is where joins start"

        def backup_settings(**kw) -> None:
            repo.metabackup.settings = dataclasses.replace(
                repo.settings, backup=dataclasses.replace(repo.settings.backup, **kw)
            )
            with repo.index.write() as t:  # and something changed since the last backup
                t.applied_put(t.applied_get())

        # a gc holds the lease: the periodic backup skips, an explicit one says who holds it
        backup_settings(interval=0)
        with repo.cluster.shared.lease(repo.cluster.node, "gc"):
            assert repo.metabackup.run(force=False) is None
            with pytest.raises(Conflict, match="gc on node"):
                repo.metabackup.run()
        backup_settings(interval=3600)  # a member backed up less than an interval ago: skipped
        assert repo.metabackup.run(force=False) is None
        backup_settings(keep=1, interval=0)
        latest = repo.metabackup.run(force=False)
        assert latest is not None and metabackup.join_point(backend, repo.index.repo_id).name == latest.name

        # with a change still to publish no join could start from a backup: none is made
        import_random(repo, tmp_path, "/unpublished.bin", 30_000)
        with pytest.raises(Conflict, match="not yet published"):
            repo.metabackup.run()
        assert repo.metabackup.run(force=False) is None
        # pruning keeps the join point past backup.keep: here newer backups of a node that lags
        lagging = [metabackup.backup_name(g, clock.now_ns(), repo.index.repo_id, join=1) for g in (100, 101)]
        for name in lagging:
            backend.put(name, b"a lagging node's index")
        repo.metabackup.prune(backend)
        listed = [n for _, _, n in metabackup.list_backups(backend, repo.index.repo_id)]
        assert listed == [latest.name, lagging[1]], "pruned to keep=1 newest, plus the join point"
    result = gc_on(b, lambda: None)
    assert result.cluster["log_truncated"]["first"] == position + 1, result.to_json()
    assert not backend.exists(sharedlog.entry_name(position))
    sync(b)  # /unpublished.bin: published now, after the join point

    late, start = clusterop.join(tmp_path / "late", url, endpoint_url=moto_server.endpoint)
    with late, late.index.read() as t:
        assert start > position and t.applied_get() == start
        owners = {t.foreign(p) for p, _ in t.packs()}
        assert owners == {_node(b)}, "every pack it started with is b's (a's it adopted): never deleted here"
    files["/unpublished.bin"] = (tmp_path / "src-unpublished.bin").read_bytes()
    _check((tmp_path / "late",), files, tmp_path)


def _node(path: Path) -> str:
    with Repository(path, writable=False) as repo:
        return repo.cluster.node
