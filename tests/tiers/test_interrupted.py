"""``chunkfs tier`` killed with SIGKILL in the middle of a move or of a re-encoding repack,
then rerun: nothing lost, readers never see a missing pack, and the rerun leaves a consistent
index with no orphan objects.

The tier command runs in a child process against the moto server of this process. Its copy
(the new packs' upload, for a repack) and delete steps are slowed down (a sleep around them,
nothing else changed) so that the kill lands exactly between the steps the crash analysis
names: after the copy and before the index switch, and after the switch and before the
source is deleted.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from helpers.cli import chunkfs
from helpers.tiers import export_and_compare, hot_pack_files, import_run, tiered_settings, write_run

from chunkfs.ops import tier as tierop
from chunkfs.repo import Repository
from chunkfs.store.maintenance.rewrite import NEW, OLD
from chunkfs.store.pack.files import pack_name
from chunkfs.types import Tier

SLOW_TIER = textwrap.dedent(
    """
    import os, sys, time
    from chunkfs.store.tiering import tiers
    from chunkfs.store.backends.local import LocalBackend
    from chunkfs.store.maintenance.rewrite import PackRewrite

    phase = os.environ["PHASE"]
    copy, delete, switch = tiers.Tiers.copy_verified, LocalBackend.delete, PackRewrite.switch

    def slow_copy(self, *args):
        digest = copy(self, *args)
        if phase == "copied":
            time.sleep(30)  # killed here: the object is on warm, the index still says hot
        return digest

    def slow_switch(self, *args):
        self.seal()
        if phase == "copied":
            time.sleep(30)  # killed here: the new packs are on warm, the index knows only the old
        return switch(self, *args)

    def slow_delete(self, name):
        if phase == "switched":
            time.sleep(30)  # killed here: the index says warm, the hot file is still there
        return delete(self, name)

    tiers.Tiers.copy_verified = slow_copy
    LocalBackend.delete = slow_delete
    PackRewrite.switch = slow_switch
    from chunkfs.cli.main import main
    sys.exit(main(["tier", "--repo", sys.argv[1]]))
    """
)


def _kill_when(repo: Repository, proc: subprocess.Popen, kind: int, timeout: float = 60) -> None:
    """SIGKILL ``proc`` once a ``moves`` note of ``kind`` is in the index and its step is done: for a
    *new* note the object exists on the warm tier; an *old* note is written by the switch itself."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with repo.index.read() as t:
            notes = [p for p, _, k, _ in t.moves() if k == kind]
        if notes and (kind == OLD or repo.tiers.backend(Tier.WARM).exists(pack_name(notes[0]))):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            return
        assert proc.poll() is None, f"tier finished before it could be killed: {proc.communicate()}"
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("no tier operation started in time")


@pytest.mark.parametrize("warm_level", [0, 3], ids=["move", "re-encode"])
def test_tier_killed_mid_move_then_rerun(moto_server, tmp_path, warm_level):
    repo_path = tmp_path / "repo"
    src = write_run(tmp_path / "src", steps=2)
    settings = tiered_settings(moto_server.endpoint)
    settings = dataclasses.replace(settings, lifecycle=dataclasses.replace(settings.lifecycle, warm_level=warm_level))
    with Repository.create(repo_path, settings=settings) as repo:
        import_run(repo, src, "/m/run1")
        tierop.complete(repo, "/m/run1")
        with repo.index.read() as t:
            total = sum(1 for _ in t.packs())
    assert total > 4

    with Repository(repo_path, writable=False) as watcher:
        for phase, kind in (("copied", NEW), ("switched", OLD), ("copied", NEW)):
            proc = subprocess.Popen(
                [sys.executable, "-c", SLOW_TIER, str(repo_path)], env=dict(os.environ, PHASE=phase),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            _kill_when(watcher, proc, kind)
            with watcher.index.read() as t:
                notes = [(p, tier, k, (i := t.pack_get(p)) and i.tier) for p, tier, k, _ in t.moves()]
            # a move keeps the pack (its home changes); a repack's new packs enter the index only
            # at the switch, which takes the old ones out
            if kind == NEW:  # copied, not switched: the new object exists, the home is still hot
                expected = (Tier.WARM, None if warm_level else Tier.HOT)
                assert {(tier, home) for _, tier, k, home in notes if k == NEW} == {expected}
                pack = next(p for p, _, k, _ in notes if k == NEW)
                assert watcher.tiers.backend(Tier.WARM).exists(pack_name(pack))
            else:  # switched, not cleaned up: the home is warm, the hot file is still there
                expected = (Tier.HOT, None if warm_level else Tier.WARM)
                assert {(tier, home) for _, tier, k, home in notes if k == OLD} == {expected}
                pack = next(p for p, _, k, _ in notes if k == OLD)
                assert watcher.hot.exists(pack_name(pack))
            # readers see every byte while the operation is half done
            watcher.drop_caches()
            export_and_compare(watcher, src, "/m/run1", tmp_path / f"out-{phase}-{kind}")

    chunkfs("tier", "--repo", repo_path, "--json")
    with Repository(repo_path, writable=False) as repo:
        with repo.index.read() as t:
            assert list(t.moves()) == []
            assert {i.tier for _, i in t.packs()} == {Tier.WARM}
            assert sum(1 for _ in t.packs()) == total or warm_level
            assert list(t.uploads()) == []
        assert hot_pack_files(repo) == []
        assert repo.tiers.audit() == [], "no missing pack, no orphan object, nothing unfinished"
        repo.drop_caches()
        export_and_compare(repo, src, "/m/run1", tmp_path / "final")
