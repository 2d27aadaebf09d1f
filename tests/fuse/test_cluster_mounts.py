"""Several nodes mounting one shared repository (docs/multinode.md): three daemons on this
machine, each with its own repository directory (hot tier, LMDB index), all on one moto S3
server. Files are written with real writers (torch.save, safetensors, numpy) through one
node's mount and read through the others'; the daemons publish and apply by themselves
(no `chunkfs sync` in between), so these tests see what users see: how long a file takes to
show up elsewhere, and what survives a node killed -9.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from helpers.cli import chunkfs
from helpers.repos import same_tree
from helpers.s3fixtures import aws_env, moto_server  # noqa: F401 (fixtures)
from helpers.tiers import s3_url, write_run

SETTINGS = {
    "chunking": {"chunk_size": 256 << 10, "min_chunk": 16 << 10},
    "packs": {"target_size": 1 << 20},
    "lifecycle": {"run_idle": 0, "seal_quiet": 0, "interval": 0, "hot_min_free": 0},
}
VISIBLE_WITHIN = 60.0
"""How long a test waits for a file to show up on another node before it fails (generous: the
lag measured here is printed, and docs/multinode.md gives it; a timed test would be flaky)."""


def _cluster(make_mount, endpoint: str, n: int = 3) -> list:
    """``n`` mounted nodes of one new shared repository (node 0 made it, the others joined)."""
    url = s3_url("cluster")
    first = make_mount(
        name="node0", settings=SETTINGS, create=["init", "--shared", "--warm", url, "--endpoint-url", endpoint]
    )
    return [first] + [
        make_mount(name=f"node{i}", settings=SETTINGS, create=["join", url, "--endpoint-url", endpoint])
        for i in range(1, n)
    ]


def _wait_same(src: Path, dst: Path, what: str) -> float:
    """Seconds until ``dst`` holds the same tree (or file) as ``src``."""
    start = time.monotonic()
    while True:
        try:
            if src.is_dir():
                same_tree(src, dst)
            else:
                assert dst.read_bytes() == src.read_bytes()
            return time.monotonic() - start
        except (AssertionError, OSError):
            if time.monotonic() - start > VISIBLE_WITHIN:
                raise AssertionError(f"{what}: {dst} not like {src} after {VISIBLE_WITHIN:.0f}s") from None
            time.sleep(0.2)


def _find_latest(m) -> list:
    rows = json.loads(chunkfs("find", "--repo", m.repo, "--latest", "--json").stdout)
    return [(r["path"], r["step"]) for r in rows]


def test_checkpoints_written_on_one_node_read_on_every_other(make_mount, moto_server, tmp_path):  # noqa: F811
    a, b, c = _cluster(make_mount, moto_server.endpoint)
    src = write_run(tmp_path / "src", "run1", steps=2)
    write_run(a.path / "llama", "run1", steps=2)
    lags = [_wait_same(src, m.path / "llama" / "run1", f"node {m.repo.name}") for m in (b, c)]
    print(f"run written on node0 visible on node1 after {lags[0]:.1f}s, on node2 after {lags[1]:.1f}s")

    # another node adds a step to the same run, with fsync, like a careful saver
    arr = np.random.default_rng(0).standard_normal(300_000).astype(np.float32)
    step = b.path / "llama" / "run1" / "checkpoint-300"
    step.mkdir()
    with open(step / "weights.npy", "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())
    (step / "trainer_state.json").write_text('{"global_step": 300}')
    for m in (a, c):
        _wait_same(b.path / "llama" / "run1", m.path / "llama" / "run1", f"node {m.repo.name}")
    assert np.array_equal(np.load(a.path / "llama" / "run1" / "checkpoint-300" / "weights.npy"), arr)
    latest = [_find_latest(m) for m in (a, b, c)]
    assert latest[0] == latest[1] == latest[2] and latest[0], f"`find --latest` differs between nodes: {latest}"
    assert latest[0][0][1] == 300


def test_published_files_survive_their_node_killed_and_it_catches_up(
    make_mount, moto_server, tmp_path  # noqa: F811 — an imported fixture, requested by name
):
    a, b, c = _cluster(make_mount, moto_server.endpoint)
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(3 << 20))
    with open(a.path / "model.bin", "wb") as f:
        f.write(src.read_bytes())
        f.flush()
        os.fsync(f.fileno())
    _wait_same(src, b.path / "model.bin", "node1")
    a.kill()  # published: node1 and node2 read it from the warm tier, node0's disk is not needed
    for m in (b, c):
        _wait_same(src, m.path / "model.bin", m.repo.name)
    (b.path / "later.txt").write_text("written while node0 was down\n")
    (b.path / "model.bin").rename(b.path / "model-renamed.bin")
    a.mount()
    _wait_same(b.path / "later.txt", a.path / "later.txt", "node0 after its restart")
    deadline = time.monotonic() + VISIBLE_WITHIN
    while (a.path / "model.bin").exists():
        assert time.monotonic() < deadline, "node0 did not apply the rename made while it was down"
        time.sleep(0.2)
    assert (a.path / "model-renamed.bin").read_bytes() == src.read_bytes()
    status = json.loads(chunkfs("status", "--repo", c.repo, "--json").stdout)["cluster"]
    assert len(status["members"]) == 3, status

