"""Names at NAME_MAX and paths at PATH_MAX through the mount, in every feature.

LMDB keys are capped at 511 bytes; a checkpoint key holds several path components
and the run and pin keys hold whole paths, so long names used to fail with EIO
(index/keys.py, "Long keys", says how they are stored now). Names over NAME_MAX get
ENAMETOOLONG from every call, as on ext4.
"""

from __future__ import annotations

import errno
import json
import os

import pytest
from helpers.cli import cli_json

A, B = "a" * 250, "b" * 250


def state(step: int, loss: float) -> str:
    return json.dumps({"global_step": step, "best_metric": loss, "log_history": [{"step": step, "eval_loss": loss}]})


def test_long_components_work_in_every_feature(mnt):
    run = mnt / A / B
    for step, loss in ((1, 0.5), (2, 0.25)):
        ckpt = run / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)  # EIO before: the registry key of this directory was over 511 bytes
        (ckpt / "model.bin").write_bytes(bytes([step]) * 100_000)
        (ckpt / "trainer_state.json").write_text(state(step, loss))
    os.rename(run / "checkpoint-2" / "model.bin", run / "checkpoint-2" / ("m" * 255))
    assert os.listdir(run / "checkpoint-2") == sorted(["trainer_state.json", "m" * 255])

    found = cli_json("find", "--model", A, cwd=mnt.path)
    assert [r["path"] for r in found] == [f"/{A}/{B}/checkpoint-1", f"/{A}/{B}/checkpoint-2"]
    assert found[0]["fields"]["model"] == A and found[0]["fields"]["run"] == B
    (latest,) = cli_json("find", "--run", B, "--latest", cwd=mnt.path)
    assert latest["step"] == 2 and latest["meta"]["eval_loss"] == 0.25
    assert os.readlink(run / "@best").endswith("checkpoint-2")
    deep = mnt / "x" / A / B / "c" / "d" / "r" / "checkpoint-3"  # model level: the joined "x/AAA…/BBB…"
    deep.mkdir(parents=True)
    assert os.readlink(mnt / "x" / A / "@latest").endswith("/c/d/r/checkpoint-3")  # a prefix of a long field
    (found,) = cli_json("find", "--model", f"x/{A}/{B}", cwd=mnt.path)
    assert found["path"] == f"/x/{A}/{B}/c/d/r/checkpoint-3"

    log = cli_json("log", run / "checkpoint-2" / ("m" * 255))
    assert log[0]["event"] == "renamed" and log[0]["size"] == 100_000
    commit = log[0]["commit"]
    snap = mnt / ".snapshots" / f"@{commit}" / A / B / "checkpoint-2" / ("m" * 255)
    assert snap.read_bytes() == bytes([2]) * 100_000

    cli_json("run", "complete", run)  # the runs database is keyed by the run's path
    assert cli_json("status", "--repo", mnt.repo)["runs_complete"] == 1
    cli_json("prefetch", run / "checkpoint-1", "--pin")  # the pins database is keyed by a path
    assert cli_json("status", "--repo", mnt.repo)["pins"] == 1
    cli_json("unpin", run / "checkpoint-1")
    assert cli_json("status", "--repo", mnt.repo)["pins"] == 0

    (run / "checkpoint-1" / "model.bin").write_bytes(b"rewritten")  # its old version: droppable
    gc = cli_json("gc", "--repo", mnt.repo, "--keep-last", "1", "--grace", "0s")
    assert f"/{A}/{B}/checkpoint-1/model.bin" in {d["path"] for d in gc["dropped"]}, gc["dropped"]
    mnt.remount()
    assert (run / "checkpoint-2" / ("m" * 255)).read_bytes() == bytes([2]) * 100_000
    assert [r["step"] for r in cli_json("find", "--model", A, cwd=mnt.path)] == [1, 2]


def test_paths_up_to_path_max(mnt):
    """A directory chain of 15 names of 255 bytes (3,840 bytes below the mount), made and
    read with paths relative to a directory descriptor, as pjdfstest's */03.t do."""
    names = [bytes([ord("c") + i % 20]) * 255 for i in range(15)]
    fd = os.open(mnt.path, os.O_RDONLY | os.O_DIRECTORY)
    fds = [fd]
    try:
        for name in names:
            os.mkdir(name, dir_fd=fds[-1])
            fds.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
        os.mkdir("checkpoint-7", dir_fd=fds[-1])
        leaf = os.open("checkpoint-7/x.bin", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fds[-1])
        os.write(leaf, b"deep" * 1000)
        os.close(leaf)
        rel = b"/".join(names) + b"/checkpoint-7/x.bin"
        assert len(rel) < 4096
        os.rename(b"checkpoint-7", b"checkpoint-8", src_dir_fd=fds[-1], dst_dir_fd=fds[-1])
        assert os.listdir(fds[-1]) == ["checkpoint-8"]
    finally:
        for f in fds:
            os.close(f)
    found = cli_json("find", "--step", "8", cwd=mnt.path)
    assert [r["path"] for r in found] == ["/" + (b"/".join(names) + b"/checkpoint-8").decode()]
    assert found[0]["fields"]["run"] == names[-1].decode()
    mnt.remount()
    fd = os.open(mnt.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with open(os.open(b"/".join(names) + b"/checkpoint-8/x.bin", os.O_RDONLY, dir_fd=fd), "rb") as f:
            assert f.read() == b"deep" * 1000
    finally:
        os.close(fd)


@pytest.mark.parametrize("call", ["chmod", "chown", "truncate", "link", "rename", "rmdir", "unlink", "stat", "open"])
def test_names_over_name_max_are_enametoolong(mnt, call):
    (mnt / "f").write_bytes(b"x")
    (mnt / "d").mkdir()
    long = str(mnt / ("n" * 256))

    def open_and_close(path: str) -> None:
        with open(path, "rb"):
            pass

    actions = {
        "chmod": lambda: os.chmod(long, 0o600),
        "chown": lambda: os.chown(long, 0, 0),
        "truncate": lambda: os.truncate(long, 0),
        "link": lambda: os.link(mnt / "f", long),
        "rename": lambda: os.rename(mnt / "f", long),
        "rmdir": lambda: os.rmdir(long),
        "unlink": lambda: os.unlink(long),
        "stat": lambda: os.stat(long),
        "open": lambda: open_and_close(long),
    }
    with pytest.raises(OSError) as e:
        actions[call]()
    assert e.value.errno == errno.ENAMETOOLONG
