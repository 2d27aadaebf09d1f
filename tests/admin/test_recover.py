"""Disaster recovery: the whole local repository (LMDB and hot tier) is deleted; `chunkfs recover`
rebuilds it from the warm tier (moto) alone, and every version committed before the last metadata
backup exports bit-identical. Runs written after the backup are lost, their chunks indexed."""

from __future__ import annotations

import filecmp
import shutil

from helpers.admin import admin_settings
from helpers.cli import chunkfs
from helpers.repos import same_tree
from helpers.tiers import import_run, write_run

from chunkfs.errors import NotFound, UsageError
from chunkfs.namespace.views import CommitView
from chunkfs.ops import fsck as fsckop
from chunkfs.ops import transfer
from chunkfs.repo import Repository
from chunkfs.store.maintenance.metabackup import list_backups
from chunkfs.types import Tier


def _export_all_versions(repo: Repository, dest, upto: int) -> dict[int, object]:
    """Export the tree as of every commit up to ``upto``; return commit → directory."""
    out = {}
    for commit in range(1, upto + 1):
        d = dest / f"c{commit}"
        d.mkdir(parents=True)
        transfer.export_tree(repo, "/", d, view=CommitView(repo.history, commit))
        out[commit] = d / "root"
    return out


def _same(a, b):
    cmp = filecmp.dircmp(a, b)
    assert not (cmp.left_only or cmp.right_only), (a, b, cmp.left_only, cmp.right_only)
    same_tree(a, b)


def test_recover_after_losing_the_node(moto_server, rclone_server, tmp_path):
    settings = admin_settings(moto_server, rclone_server, backup=__import__("chunkfs.config").config.BackupSettings(interval=0, keep=2))
    repo = Repository.create(tmp_path / "repo", settings=settings)
    warm = repo.tiers.url(Tier.WARM)
    src = {run: write_run(tmp_path / "src", run, steps=2, seed=n) for n, run in enumerate(("runA", "runB", "runC"))}
    import_run(repo, src["runA"], "/m/runA")
    repo.packs.seal_all()
    repo.uploader.drain()
    repo.metabackup.run()
    import_run(repo, src["runB"], "/m/runB")
    repo.packs.seal_all()
    repo.uploader.drain()
    repo.replicas.run_once()
    result = repo.metabackup.run()  # the last backup: runA and runB
    assert result.locations == [warm, repo.replicas.urls[0]]
    assert len(list_backups(repo.tiers.backend(Tier.WARM))) == 2
    backed_up = repo.history.last_commit()
    before = _export_all_versions(repo, tmp_path / "before", backed_up)
    import_run(repo, src["runC"], "/m/runC")  # after the last backup: lost
    repo.packs.seal_all()
    repo.uploader.drain()
    assert len(list_backups(repo.tiers.backend(Tier.WARM))) == 2  # keep = 2
    repo.close()
    shutil.rmtree(tmp_path / "repo")

    done = chunkfs("recover", "--from", warm, "--endpoint-url", moto_server.endpoint, str(tmp_path / "new"),
                   "--verify")  # fmt: skip
    assert "recovered" in done.stdout and "LOST" not in done.stdout
    with Repository(tmp_path / "new") as new:
        assert new.history.last_commit() == backed_up
        after = _export_all_versions(new, tmp_path / "after", backed_up)
        for commit in before:
            _same(before[commit], after[commit])
        same_tree(src["runB"], after[backed_up] / "m" / "runB")
        report = fsckop.fsck(new)
        assert report.ok and not report.problems
        # runC's chunks came from pack footers newer than the backup: re-importing it stores nothing new
        written = new.chunks.new_bytes
        import_run(new, src["runC"], "/m/runC")
        assert new.chunks.new_bytes == written
        new.metabackup.run()


def test_recover_from_replica_when_warm_is_lost(moto_server, rclone_server, tmp_path):
    from chunkfs.ops import recover as recoverop

    repo = Repository.create(tmp_path / "repo", settings=admin_settings(moto_server, rclone_server))
    src = write_run(tmp_path / "src", "runA", steps=2)
    import_run(repo, src, "/m/runA")
    repo.packs.seal_all()
    repo.uploader.drain()
    assert repo.replicas.run_once() > 0
    repo.metabackup.run()
    replica = repo.replicas.urls[0]
    repo.close()
    shutil.rmtree(tmp_path / "repo")
    result = recoverop.recover(replica, tmp_path / "new", endpoint_url=rclone_server.endpoint, verify=True)
    assert result.fsck["ok"] and not result.lost_packs
    with Repository(tmp_path / "new") as new:
        assert new.tiers.url(Tier.WARM) == replica and not new.replicas.configured
        out = tmp_path / "out"
        out.mkdir()
        transfer.export_tree(new, "/m/runA", out)
        same_tree(src, out / "runA")


def test_backup_command_and_usage_errors(moto_server, tmp_path):
    import json

    repo = Repository.create(tmp_path / "repo", settings=admin_settings(moto_server))
    import_run(repo, write_run(tmp_path / "src", "runA", steps=1), "/m/runA")
    repo.close()
    gens = []
    for _ in range(2):
        done = chunkfs("backup", "--repo", str(repo.path), "--json")
        doc = json.loads(done.stdout)
        assert doc["locations"] and not doc["errors"]
        gens.append(doc["generation"])
    assert gens[1] == gens[0] + 1
    chunkfs("fsck", "--repo", str(repo.path), "--sample", "0", expect=UsageError)
    done = chunkfs("recover", "--from", str(tmp_path / "nothing"), str(tmp_path / "new"), expect=NotFound)
    assert "no metadata backup" in done.stderr and not (tmp_path / "new").exists()
    done = chunkfs("fsck", "--repo", str(repo.path))
    assert done.stdout.strip().endswith("ok")


def test_recovered_repository_mounts_and_reads_back(moto_server, tmp_path):
    """The acceptance path end to end: recover, mount with the CLI, read every file through FUSE."""
    import os
    import tempfile
    from pathlib import Path

    import pytest

    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3")
    from helpers.mount import Mount

    from chunkfs.ops import recover as recoverop

    repo = Repository.create(tmp_path / "repo", settings=admin_settings(moto_server))
    src = write_run(tmp_path / "src", "runA", steps=2)
    import_run(repo, src, "/m/runA")
    repo.packs.seal_all()
    repo.uploader.drain()
    repo.metabackup.run()
    warm = repo.tiers.url(Tier.WARM)
    repo.close()
    shutil.rmtree(tmp_path / "repo")
    recoverop.recover(warm, tmp_path / "new", endpoint_url=moto_server.endpoint)

    root = Path(tempfile.mkdtemp(prefix="chunkfs-mnt-"))
    root.chmod(0o755)
    (root / "m").mkdir()
    m = Mount(tmp_path / "new", root / "m", [])
    m.mount()
    try:
        same_tree(src, m.path / "m" / "runA")
    finally:
        m.umount()
        shutil.rmtree(root, ignore_errors=True)
    assert not m.log_problems(), m.log_problems()
