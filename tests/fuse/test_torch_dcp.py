"""chunkfs.torch.Writer / Reader: DCP checkpoints written by the ranks themselves, beside a mount.

Every test runs real ranks (helpers/dcpranks.py: separate processes, gloo, DTensors sharded
over the ranks) against a mounted repository, as a training job on a GPU node would: the
ranks write into the repository in their own processes, and the mount shows the result.
"""

from __future__ import annotations

import os
import time

import pytest
from helpers.cli import chunkfs, cli_json
from helpers.dcpjob import RANK_TIMEOUT, run_ranks, start_ranks

from chunkfs.errors import UsageError

pytest.importorskip("torch", reason="chunkfs.torch needs torch (the test extra installs it)")
dcpranks = pytest.importorskip("helpers.dcpranks")


def test_four_ranks_save_and_load_bit_identical_every_way(mnt):
    """Writer → Reader, Writer → FileSystemReader through the mount, FileSystemWriter through
    the mount → Reader: every value back as saved; the files are DCP's own."""
    ckpt = mnt / "llama" / "run1" / "step-1"
    run_ranks("save", 4, ckpt, 1)
    names = sorted(os.listdir(ckpt))
    assert names == [".metadata", "__0_0.distcp", "__1_0.distcp", "__2_0.distcp", "__3_0.distcp"]
    run_ranks("load", 4, ckpt, 1)
    run_ranks("plain_load", 4, ckpt, 1)  # DCP's own reader, through the mount

    plain = mnt / "llama" / "run1" / "step-2"
    run_ranks("plain_save", 4, plain, 2)  # DCP's own writer, through the mount
    run_ranks("load", 4, plain, 2)

    versions = cli_json("log", ckpt / "__0_0.distcp")
    assert len(versions) == 1, "each file one version, like a file written through the mount"
    found = cli_json("find", "--repo", mnt.repo, "--run", "run1")
    assert sorted(r["step"] for r in found) == [1, 2], "both checkpoints are registry records"
    chunkfs("fsck", "--repo", mnt.repo)


def test_the_same_bytes_as_filesystem_writer(mnt, tmp_path):
    """A checkpoint saved by Writer and one saved by FileSystemWriter on a plain directory hold
    byte-identical shard files (only .metadata differs: its checkpoint id and save id)."""
    run_ranks("save", 2, mnt / "a", 3)
    run_ranks("plain_save", 2, tmp_path / "plain", 3)
    for name in ("__0_0.distcp", "__1_0.distcp"):
        assert (mnt / "a" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name


def test_async_save_and_a_path_given_with_its_repository(mnt):
    run_ranks("async_save", 4, "/jobs/step-5", 5, repo=mnt.repo)
    run_ranks("load", 4, "/jobs/step-5", 5, repo=mnt.repo)
    assert (mnt / "jobs" / "step-5" / ".metadata").exists(), "the mount shows what the ranks committed"


def test_a_second_save_in_the_same_ranks_splices_what_did_not_change(mnt, tmp_path):
    """Each rank saves twice in one process: the second save splices the frozen tensors of
    whole chunks (the rank checks none of them went through torch.save), and the checkpoint
    loads bit-identical with Reader and with DCP's own reader through the mount; its files
    are byte for byte those FileSystemWriter writes."""
    step = dcpranks.BIG_FROM + 1
    run_ranks("save_twice", 4, mnt / "inc" / "step", step)
    run_ranks("load", 4, mnt / "inc" / "step", step)
    run_ranks("plain_load", 4, mnt / "inc" / "step", step)
    run_ranks("plain_save", 4, tmp_path / "plain", step)
    for rank in range(4):
        name = f"__{rank}_0.distcp"
        assert (mnt / "inc" / "step" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name


def test_resharded_load_reads_with_another_number_of_ranks(mnt):
    ckpt = mnt / "reshard" / "step-7"
    run_ranks("save", 4, ckpt, 7)
    run_ranks("load", 2, ckpt, 7)
    run_ranks("load", 3, ckpt, 7)


def test_frozen_layers_dedup_across_steps_and_ranks(mnt):
    """Step 2 changes the last two of six layers: the frozen four cost nothing new."""
    run_ranks("save", 4, mnt / "ft" / "step-1", 1)
    first = mnt.stats()["unique_bytes"]
    run_ranks("save", 4, mnt / "ft" / "step-2", 2)
    added = mnt.stats()["unique_bytes"] - first
    changed = 2 * 2 * dcpranks.ROWS * dcpranks.COLS * 4 + 4096 * 4  # two layers' weights and moments, the embed
    assert added < changed * 1.25, f"{added} new bytes for {changed} changed"
    assert added > changed * 0.9, f"{added} new bytes: the changed layers must be stored"


@pytest.mark.parametrize("action", ["die", "async_die"])
def test_a_rank_killed_mid_save_leaves_no_complete_checkpoint(mnt, action):
    """Rank 1 is killed (SIGKILL) half-way through its file — in ``dcp.save``, or in the
    background writer of ``dcp.async_save`` while the training loop has moved on: the save
    never gets a .metadata (it is not a complete checkpoint), the previous checkpoint still
    loads, and the repository is sound."""
    run_ranks("save", 4, mnt / "k" / "step-1", 1)
    procs = start_ranks(action, 4, mnt / "k" / "step-2", 2)
    try:
        deadline = time.monotonic() + RANK_TIMEOUT
        while procs[1].poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert procs[1].returncode == -9, procs[1].communicate()[1][-3000:]
        time.sleep(1)
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    assert not (mnt / "k" / "step-2" / ".metadata").exists()
    assert "__1_0.distcp" not in os.listdir(mnt / "k" / "step-2") or (mnt / "k" / "step-2" / "__1_0.distcp").stat().st_size == 0
    run_ranks("load", 4, mnt / "k" / "step-1", 1)
    mnt.umount()
    chunkfs("fsck", "--repo", mnt.repo)


def test_single_process_save_into_the_mount_reads_through_it(mnt, tmp_path):
    """chunkfs.torch.save / save_file with a path inside the mount: the process writes the
    repository itself, and the mount shows the file (plain torch.load / load_file read it).
    A path inside the mount names the mounted repository: another one named too is refused."""
    import torch
    from safetensors.torch import load_file

    import chunkfs.torch as ct

    state = {"w": torch.randn(256, 256), "b": torch.arange(7)}
    ct.save_file(state, mnt / "m" / "run1" / "model.safetensors")
    ct.save({"model": state, "step": 3}, mnt / "m" / "run1" / "ckpt.pt")
    loaded = load_file(mnt / "m" / "run1" / "model.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert torch.load(mnt / "m" / "run1" / "ckpt.pt", weights_only=True)["step"] == 3
    assert ct.load(mnt / "m" / "run1" / "ckpt.pt", weights_only=True)["step"] == 3
    chunkfs("init", tmp_path / "other")
    with pytest.raises(UsageError, match=r"inside the mount of .*; drop repo="):
        ct.save(state, mnt / "m" / "run1" / "other.pt", repo=tmp_path / "other")


def test_ranks_save_while_others_list_read_and_rename_in_the_directory(mnt):
    """A training job's neighbours: while 4 ranks save into ``c/step-2``, other threads list
    and stat the checkpoint directories through the mount, read the previous checkpoint's
    shards, and replace a ``latest`` pointer by rename again and again (as trainers do). The
    ranks' files and the pointer all come out right, the old checkpoint never reads
    differently, and the repository is sound."""
    import hashlib
    import threading

    root = mnt / "c"
    run_ranks("save", 4, root / "step-1", 1)
    shards = sorted(p for p in (root / "step-1").iterdir())
    first = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards}
    done = threading.Event()
    problems: list[str] = []
    counts = {"list": 0, "read": 0, "rename": 0}

    def keep_doing(what, step):
        try:
            while not done.is_set():
                step()
                counts[what] += 1
        except Exception as e:  # noqa: BLE001 - reported by the test, not lost in a thread
            problems.append(f"{what}: {e!r}")

    def listing():
        for d in (root, root / "step-1", root / "step-2"):
            if d.exists():
                for entry in os.scandir(d):
                    try:
                        entry.stat()
                    except FileNotFoundError:  # latest.tmp, renamed meanwhile
                        pass

    def reading():
        for p in shards:
            got = hashlib.sha256(p.read_bytes()).hexdigest()
            if got != first[p.name]:
                problems.append(f"{p.name} of step-1 read differently while step-2 was saved")

    def renaming():
        n = counts["rename"]
        (root / "latest.tmp").write_text(str(n))
        os.replace(root / "latest.tmp", root / "latest")

    threads = [threading.Thread(target=keep_doing, args=(w, f)) for w, f in
               (("list", listing), ("read", reading), ("rename", renaming))]  # fmt: skip
    for t in threads:
        t.start()
    try:
        run_ranks("save", 4, root / "step-2", 2)
    finally:
        done.set()
        for t in threads:
            t.join(timeout=120)
    assert not problems, problems
    assert min(counts.values()) > 0, counts
    assert (root / "latest").read_text() == str(counts["rename"] - 1)
    assert sorted(os.listdir(root)) == ["latest", "step-1", "step-2"]
    run_ranks("plain_load", 4, root / "step-2", 2)  # DCP's own reader, through the mount
    mnt.umount()
    chunkfs("fsck", "--repo", mnt.repo)
