"""A repository shared by several nodes through its warm tier (docs/multinode.md), driven
through the library: each "node" is a repository directory of its own on this machine (its
own hot tier and LMDB index), all on one moto S3 server; ``chunkfs sync``'s library call is
what moves changes between them. The mount-level tests (daemons publishing and applying by
themselves) are in tests/fuse/test_cluster_mounts.py."""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers.clusternodes import export, import_random, nodes, sync
from helpers.repos import same_tree
from helpers.s3servers import BUCKET
from helpers.tiers import s3_url, tiered_settings, write_run

from chunkfs import config
from chunkfs.cluster.entries import encode
from chunkfs.errors import AlreadyExists, ConfigError, Conflict, NotFound, UsageError
from chunkfs.ops import cluster as clusterop
from chunkfs.ops import recover, transfer
from chunkfs.ops import tier as tierop
from chunkfs.ops.drill import drill
from chunkfs.ops.fsck import fsck
from chunkfs.repo import Repository
from chunkfs.store.pack.files import pack_name
from chunkfs.types import ROOT_INODE, Tier


def test_changes_published_on_one_node_are_applied_on_the_others(tmp_path, moto_server):
    _, (a, b, c) = nodes(tmp_path, moto_server.endpoint, 3)
    run = write_run(tmp_path / "src", steps=2)
    with Repository(a) as repo:
        transfer.import_tree(repo, run, "/llama/run1")
    assert sync(a).published > 0
    for node in (b, c):
        sync(node)
    _re_encode_and_relocate(a, (b, c), run, tmp_path)
    for node in (b, c):
        same_tree(run, export(node, "/llama/run1", tmp_path / f"out-{node.name}"))
    with Repository(c) as repo:  # fsck and drills run on any node, over other nodes' packs on warm
        report = fsck(repo)
        assert report.ok, report.as_dict()
        result = drill(repo, "/llama/run1", scratch=tmp_path / "drill")
        assert result.verdict == "pass", result.problems

    # b renames, removes and writes; a and c follow
    with Repository(b) as repo:
        ns = repo.ns
        run_dir = ns.resolve("/llama/run1")
        first = min(name for name, _, _ in ns.readdir(run_dir))
        ns.rename(run_dir, first, run_dir, b"renamed")
        transfer.import_tree(repo, run / min(os.listdir(run)), "/llama/run1/copied")
    sync(b)
    for node in (a, c):
        sync(node)
        with Repository(node, writable=False) as repo:
            names = {n for n, _, _ in repo.ns.readdir(repo.ns.resolve("/llama/run1"))}
        assert b"renamed" in names and first not in names and b"copied" in names
        same_tree(run / min(os.listdir(run)), export(node, "/llama/run1/copied", tmp_path / f"c-{node.name}"))


def _re_encode_and_relocate(a, others, run, tmp_path) -> None:
    """Node ``a`` re-encodes its complete run on the way to warm (new packs); the other nodes,
    which read its old packs on warm, keep reading them until they apply its relocate change,
    then read the new ones; ``a`` deletes the old objects once every member has applied it."""
    with Repository(a) as repo:
        tierop.complete(repo, "/llama/run1")
        with repo.index.read() as t:
            before = {p for p, _ in t.packs()}
        actions = tierop.plan(repo)
        assert [(x.dst, x.level) for x in actions] == [(Tier.WARM, 3)]
        tierop.apply(repo, actions)
        with repo.index.read() as t:
            after = {p for p, i in t.packs() if i.tier == Tier.WARM}
            assert after and after.isdisjoint(before) and set(t.retiring()) == before
        warm = repo.tiers.backend(Tier.WARM)
        old = {pack_name(p) for p in before}
        assert old <= set(warm.list("packs/")), "kept on warm: the other nodes read them there"
    for node in others:  # not applied yet: the old places
        same_tree(run, export(node, "/llama/run1", tmp_path / f"before-{node.name}"))
    sync(a)  # publishes the relocate change
    for node in others:
        sync(a)  # a member has not applied it yet (down, or behind): the old objects stay
        assert old <= set(warm.list("packs/")), f"deleted before {node.name} applied the change"
        sync(node)
        with Repository(node) as repo:
            with repo.index.read() as t:
                assert {bytes(loc.pack) for _, loc in t.chunks()} & before == set(), "every chunk relocated"
                assert not {p for p, _ in t.packs()} & before, "the retired packs forgotten"
            repo.drop_caches()
            transfer.export_tree(repo, "/llama/run1", tmp_path / f"after-{node.name}")
        same_tree(run, tmp_path / f"after-{node.name}")
    sync(a)  # every member has applied it: the old objects go
    assert not old & set(warm.list("packs/"))
    with Repository(a) as repo, repo.index.read() as t:
        assert t.retiring() == {}


def test_re_encoding_moves_run_on_one_node_at_a_time(tmp_path, moto_server):
    """The re-encodings of tier moves hold the cluster's maintenance lease: `chunkfs tier` names
    the node that holds it, a mount's round leaves them for a later one."""
    _, (a, b) = nodes(tmp_path, moto_server.endpoint, 2)
    with Repository(a) as repo:
        transfer.import_tree(repo, write_run(tmp_path / "src", steps=1), "/llama/run1")
    sync(a)
    with Repository(a) as repo:
        tierop.complete(repo, "/llama/run1")
        with Repository(b) as other, other.cluster.shared.lease(other.cluster.node, "gc"):
            with pytest.raises(Conflict, match="gc on node"):
                tierop.apply(repo, tierop.plan(repo))
            assert repo.run_policies().written == {}, "a mount's round does not wait for the lease"
            with repo.index.read() as t:
                assert {i.tier for _, i in t.packs()} == {Tier.HOT}
        assert repo.run_policies().written["warm"]["packs"] > 0, "once it is free"


def test_two_nodes_writing_one_path_converge_and_keep_both_versions(tmp_path, moto_server):
    _, (a, b) = nodes(tmp_path, moto_server.endpoint)
    for node, text in ((a, b"from a\n" * 1000), (b, b"from b\n" * 1000)):
        src = tmp_path / f"{node.name}.txt"
        src.write_bytes(text)
        with Repository(node) as repo:
            transfer.import_tree(repo, src, "/same.txt")
    sync(a)  # a's change is entry 1 ...
    sync(b)  # ... b applies it under its own, not yet published one, then publishes: b's is later
    sync(a)
    for node in (a, b):
        out = export(node, "/same.txt", tmp_path / f"same-{node.name}")
        assert out.read_bytes() == b"from b\n" * 1000, f"{node.name} shows the log's loser"
        with Repository(node, writable=False) as repo:
            contents = {e.blake3 for e in repo.history.log("/same.txt") if e.blake3}
        assert len(contents) == 2, f"{node.name}: both contents are in the history"


def test_an_unpublished_change_is_published_after_a_restart(tmp_path, moto_server):
    _, (a, b) = nodes(tmp_path, moto_server.endpoint)
    with Repository(a) as repo:
        data = import_random(repo, tmp_path, "/f.bin", 300_000)
        assert repo.cluster.pending()[0] > 0  # journaled with the commit, nothing published yet
    sync(b)
    with Repository(b, writable=False) as repo, pytest.raises(NotFound):
        repo.ns.resolve("/f.bin")
    sync(a)  # a new process: the journal survived in the index
    sync(b)
    assert export(b, "/f.bin", tmp_path / "out.bin").read_bytes() == data


def test_a_store_without_conditional_writes_is_refused(tmp_path, own_rclone):
    rclone = own_rclone
    settings = tiered_settings(rclone.endpoint, warm=f"s3://{BUCKET}/shared")
    with pytest.raises(ConfigError, match="conditional writes"):
        clusterop.init_shared(tmp_path / "node0", settings)
    assert not (tmp_path / "node0").exists()


def test_shared_needs_an_s3_warm_tier_and_no_cold_tier(tmp_path, moto_server):
    with pytest.raises(UsageError, match="S3 warm tier"):
        clusterop.init_shared(tmp_path / "x", tiered_settings(None, warm=str(tmp_path / "warm")))
    settings = tiered_settings(moto_server.endpoint, cold=s3_url("cold"))
    with pytest.raises(UsageError, match="no cold tier"):
        clusterop.init_shared(tmp_path / "y", settings)


def test_links_attributes_and_removals_replay_like_the_tree_they_came_from(tmp_path, moto_server):
    _, (a, b) = nodes(tmp_path, moto_server.endpoint)
    with Repository(a) as repo:
        ns = repo.ns
        data = import_random(repo, tmp_path, "/m/w.bin", 100_000)
        m = ns.resolve("/m")
        f = ns.resolve("/m/w.bin")
        ns.symlink(m, b"latest", b"w.bin", 0, 0)
        ns.link(f, m, b"hard.bin")
        ns.setxattr(f, b"user.note", b"\x00binary\xff")
        ns.setattr(f, mode=0o600, mtime_ns=1_234_567_890)
        ns.mkdir(m, b"empty", 0o700, 0, 0)
        ns.rmdir(m, b"empty")
        ns.mkdir(m, "ünïcode-\udcff".encode(errors="surrogateescape"), 0o750, 1000, 1000)
    sync(a)
    sync(b)
    with Repository(b, writable=False) as repo:
        ns = repo.ns
        m = ns.resolve("/m")
        names = {n: r for n, _, r in ns.readdir(m)}
        assert set(names) == {b"w.bin", b"latest", b"hard.bin", "ünïcode-\udcff".encode(errors="surrogateescape")}
        f, rec = ns.lookup(m, b"w.bin")
        assert ns.lookup(m, b"hard.bin")[0] == f and rec.nlink == 2, "a hard link is one inode"
        assert ns.readlink(ns.resolve("/m/latest")) == b"w.bin"
        assert ns.getxattr(f, b"user.note") == b"\x00binary\xff"
        assert rec.mode & 0o7777 == 0o600 and rec.mtime_ns == 1_234_567_890
        unicode = names["ünïcode-\udcff".encode(errors="surrogateescape")]
        assert (unicode.mode & 0o7777, unicode.uid, unicode.gid) == (0o750, 1000, 1000)
    assert export(b, "/m/hard.bin", tmp_path / "hard").read_bytes() == data


def test_recover_refuses_a_shared_location_and_join_rebuilds_a_lost_node(tmp_path, moto_server):
    url, (a, b) = nodes(tmp_path, moto_server.endpoint)
    with Repository(a) as repo:
        data = import_random(repo, tmp_path, "/f.bin", 200_000)
    sync(a)
    with pytest.raises(UsageError, match="chunkfs join"):
        recover.recover(url, tmp_path / "copy", endpoint_url=moto_server.endpoint)
    shutil.rmtree(b)  # node1 lost its disk: it joins again, from the log alone
    repo, position = clusterop.join(tmp_path / "again", url, endpoint_url=moto_server.endpoint)
    repo.close()
    assert position >= 1
    assert export(tmp_path / "again", "/f.bin", tmp_path / "out").read_bytes() == data


def test_a_file_whose_pack_is_not_on_warm_yet_is_not_published_even_empty(tmp_path, moto_server):
    _, (a, b) = nodes(tmp_path, moto_server.endpoint)
    data = os.urandom(200_000)
    with Repository(a) as repo:
        ino, _ = repo.ns.mknod(ROOT_INODE, b"open.bin", 0o644, 0, 0, versioned=False)
        content = repo.file_content(ino)
        content.write(0, data)
        repo.commit_file(ino, content)  # durable here, its pack still open in this process
        assert repo.cluster.sync()[0] == 0
        assert "still open" in repo.cluster.publisher.waiting
    sync(b)
    with Repository(b, writable=False) as repo, pytest.raises(NotFound):
        repo.ns.resolve("/open.bin")  # not even its name: it would read empty
    sync(a)  # closing sealed the pack; now it is uploaded, then published
    sync(b)
    assert export(b, "/open.bin", tmp_path / "out").read_bytes() == data


def test_a_cold_tier_added_to_a_shared_repository_is_refused_at_open(tmp_path, moto_server):
    _, (a, _) = nodes(tmp_path, moto_server.endpoint)
    text = (a / config.CONFIG_NAME).read_text()
    (a / config.CONFIG_NAME).write_text(text.replace('cold = ""', f'cold = "{s3_url("cold")}"', 1))
    with pytest.raises(ConfigError, match="no cold tier"):
        Repository(a)
    (a / config.CONFIG_NAME).write_text(text)  # the lock was let go: it opens again once fixed
    Repository(a).close()


def test_metadata_set_on_one_node_is_found_on_the_others(tmp_path, moto_server):
    _, (a, b) = nodes(tmp_path, moto_server.endpoint)
    run = write_run(tmp_path / "src", steps=1)
    with Repository(a) as repo:
        transfer.import_tree(repo, run, "/llama/run1")
    with Repository.metadata(a) as registry:  # `chunkfs meta set`: beside a mount, without the lock
        registry.set_meta("/llama/run1/checkpoint-100", {"eval_loss": "0.25", "note": "good"})
        registry.set_meta("/llama/run1/checkpoint-100", {"note": None})
    sync(a)
    sync(b)
    with Repository(b, writable=False) as repo:
        meta = repo.registry.get_meta("/llama/run1/checkpoint-100").meta
        found = repo.registry.find(where="eval_loss<0.3")
    assert meta["eval_loss"] == 0.25 and "note" not in meta
    assert [c.path for c in found] == ["/llama/run1/checkpoint-100"]


def test_nodes_publishing_at_once_each_get_their_own_entries(tmp_path, moto_server):
    """Several publishers race for the same log positions (conditional PUTs): each loser applies
    the winner's entry and takes the next position; every change lands once, everywhere."""
    _, paths = nodes(tmp_path, moto_server.endpoint, 3)
    repos = [Repository(n) for n in paths]
    try:
        for round_ in range(3):
            for i, repo in enumerate(repos):
                import_random(repo, tmp_path, f"/race/r{round_}-n{i}.bin", 50_000)
                repo.packs.seal_all()
                repo.uploader.drain()
            barrier = threading.Barrier(len(repos))

            def publish(repo, barrier=barrier):
                barrier.wait()
                return repo.cluster.sync()

            with ThreadPoolExecutor(len(repos)) as pool:
                results = list(pool.map(publish, repos))
            assert all(sent > 0 for sent, _ in results), f"a node's change did not go out: {results}"
        positions = [repo.cluster.sync()[1] for repo in repos]
        assert len(set(positions)) == 1, positions
        for repo in repos:
            names = sorted(n for n, _, _ in repo.ns.readdir(repo.ns.resolve("/race")))
            assert len(names) == 9, names
            assert repo.cluster.pending()[0] == 0
    finally:
        for repo in repos:
            repo.close()


def test_a_node_that_died_after_writing_its_entry_does_not_publish_it_twice(tmp_path, moto_server):
    _, (a, b) = nodes(tmp_path, moto_server.endpoint)
    with Repository(a) as repo:
        data = import_random(repo, tmp_path, "/f.bin", 80_000)
        repo.packs.seal_all()
        repo.uploader.drain()
        publisher = repo.cluster.publisher
        entry, seqs = publisher._ready()  # what the publisher sends …
        assert repo.cluster.shared.append(1, encode(entry))  # … and the PUT succeeds; then kill -9
        assert repo.cluster.pending()[0] == len(seqs)
    with Repository(a) as repo:  # the node comes back
        assert repo.cluster.sync() == (0, 1), "its own entry is noted, not published again"
        assert repo.cluster.pending()[0] == 0
        assert repo.cluster.shared.read(2) is None
    sync(b)
    assert export(b, "/f.bin", tmp_path / "out").read_bytes() == data


def test_init_shared_on_a_shared_location_says_to_join(tmp_path, moto_server):
    url, _ = nodes(tmp_path, moto_server.endpoint)
    with pytest.raises(AlreadyExists, match="chunkfs join"):
        clusterop.init_shared(tmp_path / "other", tiered_settings(moto_server.endpoint, warm=url))


def test_a_join_starts_from_the_newest_metadata_backup_when_it_has_nothing_unpublished(tmp_path, moto_server):
    url, (a,) = nodes(tmp_path, moto_server.endpoint, 1)
    files = {}
    for name in ("one.bin", "two.bin", "three.bin"):
        files[name] = os.urandom(120_000)
        (tmp_path / name).write_bytes(files[name])
    with Repository(a) as repo:
        transfer.import_tree(repo, tmp_path / "one.bin", "/one.bin")
    sync(a)  # published: entry 1
    with Repository(a) as repo:
        transfer.import_tree(repo, tmp_path / "two.bin", "/two.bin")  # not published yet
        with pytest.raises(Conflict, match="not yet published"):  # no join could start from it: not made
            repo.metabackup.run()
    early, position = clusterop.join(tmp_path / "early", url, endpoint_url=moto_server.endpoint)
    with early:  # so it replayed the log, and shows nothing that was not published
        assert position == 1
        assert [n for n, _, _ in early.ns.readdir(ROOT_INODE)] == [b"one.bin"]
    sync(a)
    with Repository(a) as repo:
        assert repo.cluster.pending()[0] == 0
        assert repo.metabackup.run() is not None  # this one is: everything in it is in the log
        transfer.import_tree(repo, tmp_path / "three.bin", "/three.bin")
    sync(a)
    # the log before the backup could be gone (index checkpoints would truncate it): the join
    # must not need it
    backend = moto_server.backend(url)
    for position in (1, 2):
        backend.delete(f"cluster/log/{position:020d}")
    repo, position = clusterop.join(tmp_path / "late", url, endpoint_url=moto_server.endpoint)
    repo.close()
    assert position == 3
    for name, data in files.items():
        assert export(tmp_path / "late", f"/{name}", tmp_path / f"out-{name}").read_bytes() == data
    with Repository(a, writable=False) as repo:
        origin = repo.cluster.node
    with Repository(tmp_path / "late") as repo:
        assert repo.cluster.node != origin and not repo.cluster.origin, "the backup's membership was kept"
        assert repo.cluster.pending()[0] == 0
        assert fsck(repo).ok
        with repo.index.read() as t:  # the packs it started with are the creating node's: never deleted here
            assert all(t.foreign(p) for p, _ in t.packs()), "a joined node would delete another node's packs"


def test_a_tag_made_on_one_node_is_made_on_every_node(tmp_path, moto_server):
    """Tags name commit numbers, which are each node's own: another node tags its own state after
    the changes that came before the tag in the log — the same tree."""
    _, (a, b) = nodes(tmp_path, moto_server.endpoint)
    with Repository(a) as repo:
        data = import_random(repo, tmp_path, "/run/model.bin", 200_000)
        repo.history.tag("release-1", path="/run")
        import_random(repo, tmp_path, "/run/model.bin", 100_000)  # a newer version after the tag
    sync(a)
    sync(b)
    with Repository(b) as repo:
        tags = {name: (commit, path) for name, commit, _created, path in repo.history.tags()}
        assert tags["release-1"][1] == "/run"
        version = repo.history.resolve_at("/run/model.bin", tags["release-1"][0])
        assert repo.content_of(repo.history.extents(version)).read(0, version.record.size) == data
        repo.history.delete_tag("release-1")
    sync(b)
    sync(a)
    with Repository(a, writable=False) as repo:
        assert repo.history.tags() == []
