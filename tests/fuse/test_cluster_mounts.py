"""Several nodes mounting one shared repository (docs/multinode.md): three daemons on this
machine, each with its own repository directory (hot tier, LMDB index), all on one moto S3
server. Files are written with real writers (torch.save, safetensors, numpy) through one
node's mount and read through the others'; the daemons publish and apply by themselves
(no `chunkfs sync` in between), so these tests see what users see: how long a file takes to
show up elsewhere, and what survives a node killed -9.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import loadworkers
from helpers.cli import chunkfs
from helpers.repos import same_tree
from helpers.s3fixtures import aws_env, moto_server  # noqa: F401 (fixtures)
from helpers.s3servers import BUCKET, admin_client
from helpers.tiers import bf16_checkpoint, s3_url, write_run
from moto.server import ThreadedMotoServer

from chunkfs.repo import Repository
from chunkfs.store.pack.files import pack_name
from chunkfs.types import Tier

SETTINGS = {
    "chunking": {"chunk_size": 256 << 10, "min_chunk": 16 << 10},
    "packs": {"target_size": 1 << 20},
    "lifecycle": {"run_idle": 0, "seal_quiet": 0, "interval": 0, "hot_min_free": 0},
    "writers": {"processes": 1},  # three daemons on two cores
}
VISIBLE_WITHIN = 60.0
"""How long a test waits for a file to show up on another node before it fails (generous: the
lag measured here is printed, and docs/multinode.md gives it; a timed test would be flaky)."""


def _cluster(make_mount, endpoint: str, n: int = 3, *, first: dict | None = None) -> list:
    """``n`` mounted nodes of one new shared repository (node 0 made it, the others joined;
    ``first``: more settings of node 0)."""
    url = s3_url("cluster")
    first = make_mount(
        name="node0", settings={**SETTINGS, **(first or {})},
        create=["init", "--shared", "--warm", url, "--endpoint-url", endpoint],
    )  # fmt: skip
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
                return time.monotonic() - start
            # not `assert`: pytest would explain a mismatch of two big byte strings with difflib,
            # which takes hours (that was the CI "hang" of test_a_file_another_node_rewrites…)
            if dst.read_bytes() == src.read_bytes():
                return time.monotonic() - start
        except (AssertionError, OSError):
            pass  # not there yet
        if time.monotonic() - start > VISIBLE_WITHIN:
            raise AssertionError(f"{what}: {dst} not like {src} after {VISIBLE_WITHIN:.0f}s")
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
    a, b = _cluster(make_mount, moto_server.endpoint, 2)
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(3 << 20))
    with open(a.path / "model.bin", "wb") as f:
        f.write(src.read_bytes())
        f.flush()
        os.fsync(f.fileno())
    _wait_same(src, b.path / "model.bin", "node1")
    a.kill()  # published: node1 reads it from the warm tier, node0's disk is not needed
    assert (b.path / "model.bin").read_bytes() == src.read_bytes()
    (b.path / "later.txt").write_text("written while node0 was down\n")
    (b.path / "model.bin").rename(b.path / "model-renamed.bin")
    a.mount()
    _wait_same(b.path / "later.txt", a.path / "later.txt", "node0 after its restart")
    deadline = time.monotonic() + VISIBLE_WITHIN
    while (a.path / "model.bin").exists():
        assert time.monotonic() < deadline, "node0 did not apply the rename made while it was down"
        time.sleep(0.2)
    assert (a.path / "model-renamed.bin").read_bytes() == src.read_bytes()
    status = json.loads(chunkfs("status", "--repo", b.repo, "--json").stdout)["cluster"]
    assert len(status["members"]) == 2, status



class RestartableS3:
    """A moto server of the test's own that it stops and starts again on the same port: moto keeps
    its buckets in this process, so what was stored is there again after the restart."""

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, self.port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{self.port}"
        client = admin_client(self.endpoint)
        if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
            client.create_bucket(Bucket=BUCKET)

    def stop(self) -> None:
        self._server.stop()

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()


@pytest.fixture
def own_s3():
    server = RestartableS3()
    yield server
    server.stop()


def test_a_node_cut_off_from_the_store_keeps_writing_and_publishes_later(make_mount, own_s3, tmp_path):
    a, b = _cluster(make_mount, own_s3.endpoint, 2)
    first = tmp_path / "first.bin"
    first.write_bytes(os.urandom(1 << 20))
    (a.path / "first.bin").write_bytes(first.read_bytes())
    _wait_same(first, b.path / "first.bin", "node1")

    own_s3.stop()
    for m in (a, b):
        m.expect_log(r"unreachable|shared log|upload|metadata backup")
    data = tmp_path / "while-down.bin"
    data.write_bytes(os.urandom(2 << 20))
    with open(a.path / "while-down.bin", "wb") as f:  # fsync'd on node0 while the store is down
        f.write(data.read_bytes())
        f.flush()
        os.fsync(f.fileno())
    assert (a.path / "while-down.bin").read_bytes() == data.read_bytes()
    time.sleep(15)
    (a.path / "later.bin").write_bytes(first.read_bytes()[::-1])  # writing goes on, 30 s down in all
    time.sleep(15)
    assert not (b.path / "while-down.bin").exists(), "published without a store?"
    status = json.loads(chunkfs("status", "--repo", a.repo, "--json", timeout=120).stdout)["cluster"]
    assert status["pending_changes"] > 0 and status["error"], status

    own_s3.start()
    _wait_same(data, b.path / "while-down.bin", "node1 after the store came back")
    assert (b.path / "later.bin").read_bytes() == first.read_bytes()[::-1]
    deadline = time.monotonic() + VISIBLE_WITHIN
    while (status := json.loads(chunkfs("status", "--repo", a.repo, "--json").stdout)["cluster"])["error"]:
        assert time.monotonic() < deadline, f"node0 still reports the store down: {status}"
        time.sleep(0.5)
    assert status["pending_changes"] == 0, status


def test_a_file_another_node_rewrites_reads_its_new_content(make_mount, moto_server, tmp_path):  # noqa: F811
    """Also ``cluster.publish_on_fsync`` on the writing node: its fsync returns once the change
    is in the shared log (nothing of it left only on that node)."""
    a, b = _cluster(make_mount, moto_server.endpoint, 2, first={"cluster": {"publish_on_fsync": True}})
    (a.path / "f.bin").write_bytes(b"")
    (tmp_path / "empty").write_bytes(b"")
    _wait_same(tmp_path / "empty", b.path / "f.bin", "the empty file")
    assert os.stat(b.path / "f.bin").st_size == 0  # node1's kernel now caches it, empty
    for i in range(3):
        data = tmp_path / f"v{i}"
        data.write_bytes(os.urandom(300_000 + i))
        with open(a.path / "f.bin", "wb") as f:
            f.write(data.read_bytes())
            f.flush()  # Python's buffer is the mount's block size, 1 MiB: fsync alone would miss it
            start = time.monotonic()
            os.fsync(f.fileno())
            fsync_s = time.monotonic() - start
            status = json.loads(chunkfs("status", "--repo", a.repo, "--json").stdout)["cluster"]
            assert status["pending_changes"] == 0, f"fsync returned before the publish: {status}"
        lag = _wait_same(data, b.path / "f.bin", f"version {i}")
        print(f"version {i}: fsync with the publish {fsync_s:.1f}s, then visible on node1 after {lag:.1f}s")


def test_one_dcp_checkpoint_written_by_ranks_on_two_nodes_loads_on_a_third(make_mount, moto_server):  # noqa: F811
    """Ranks 0–1 write through node0's mount, ranks 2–3 through node1's (``chunkfs.torch.Writer``,
    each rank a writer of its node's repository): one checkpoint directory, loaded bit-identical
    on node2 — with chunkfs.torch.Reader and with DCP's own FileSystemReader through the mount."""
    pytest.importorskip("torch", reason="the DCP ranks need torch (the test extra installs it)")
    from helpers.dcpjob import run_ranks

    a, b, c = _cluster(make_mount, moto_server.endpoint)
    (a.path / "llama").mkdir()
    _wait_exists(c.path / "llama")
    ckpts = [m.path / "llama" / "step-1" for m in (a, a, b, b)]
    run_ranks("save", 4, ckpts, 1)
    start = time.monotonic()
    names = [".metadata", "__0_0.distcp", "__1_0.distcp", "__2_0.distcp", "__3_0.distcp"]
    for m in (c, a, b):
        for name in names:
            _wait_exists(m.path / "llama" / "step-1" / name)
        print(f"the checkpoint was complete on {m.repo.name} {time.monotonic() - start:.1f}s after the save returned")
        assert sorted(os.listdir(m.path / "llama" / "step-1")) == names, m.repo.name
    run_ranks("load", 2, c.path / "llama" / "step-1", 1)
    run_ranks("plain_load", 4, c.path / "llama" / "step-1", 1)


def _wait_exists(path: Path) -> None:
    deadline = time.monotonic() + VISIBLE_WITHIN
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not show up within {VISIBLE_WITHIN:.0f}s"
        time.sleep(0.2)


def test_gc_on_one_node_while_two_others_write_loses_nothing(make_mount, moto_server, tmp_path):  # noqa: F811
    """Nodes 0 and 1 save checkpoints through their mounts and delete the step before last (like
    ``save_total_limit``), every step with one array it shares with every other step (found by
    dedup, maybe while a gc condemned it) — while node 2 runs ``chunkfs gc --keep-within 0s``
    beside its own mount. Afterwards every file left reads back bit-identical on every node."""
    a, b, c = _cluster(make_mount, moto_server.endpoint)
    rng = np.random.default_rng(7)
    shared = rng.standard_normal(150_000).astype(np.float32)
    expected: dict[str, np.ndarray] = {}
    errors: list[BaseException] = []

    def save_steps(m, run: str) -> None:
        try:
            for step in range(1, 13):
                d = m.path / run / f"checkpoint-{step}"
                d.mkdir(parents=True)
                fresh = np.random.default_rng(step + 100 * len(run)).standard_normal(60_000).astype(np.float32)
                np.save(d / "fresh.npy", fresh)
                np.save(d / "shared.npy", shared)
                expected[f"{run}/checkpoint-{step}/fresh.npy"] = fresh
                old = m.path / run / f"checkpoint-{step - 2}"
                if old.exists():
                    shutil.rmtree(old)
                    for k in [k for k in expected if k.startswith(f"{run}/checkpoint-{step - 2}/")]:
                        del expected[k]
                time.sleep(0.5)
        except BaseException as e:  # noqa: BLE001 - the test thread reports it
            errors.append(e)

    writers = [threading.Thread(target=save_steps, args=(m, run)) for m, run in ((a, "run-a"), (b, "run-b"))]
    for w in writers:
        w.start()
    results = []
    while any(w.is_alive() for w in writers):
        out = chunkfs("gc", "--repo", c.repo, "--keep-within", "0s", "--grace", "0s", "--json", timeout=240)
        results.append(json.loads(out.stdout))
    for w in writers:
        w.join()
    assert not errors, errors
    results.append(json.loads(chunkfs("gc", "--repo", c.repo, "--keep-within", "0s", "--grace", "0s", "--json",
                                      timeout=240).stdout))  # fmt: skip
    print("gc runs:", [(r["versions_dropped"], r["chunks_condemned"], r["chunks_swept"], r["cluster"]) for r in results])
    assert sum(r["chunks_swept"] for r in results) > 0, "the gcs reclaimed the deleted steps"
    assert len(expected) == 2 * 2  # two steps left of each run, one fresh array each
    for m in (a, b, c):
        for name, fresh in expected.items():
            _wait_exists(m.path / name)
            assert np.array_equal(np.load(m.path / name), fresh), f"{name} on {m.repo.name}"
            assert np.array_equal(np.load(m.path / Path(name).parent / "shared.npy"), shared), f"{name} on {m.repo.name}"
        report = json.loads(chunkfs("fsck", "--repo", m.repo, "--json").stdout)
        assert report["ok"], (m.repo.name, report)


def test_a_run_re_encoded_on_one_node_reads_on_the_other_throughout(make_mount, moto_server, tmp_path):  # noqa: F811
    """node0's tier mover re-encodes a complete run into new warm packs (the older checkpoints as
    deltas of the newer) while verifier processes read it through node1: node1 reads the old packs until it applies node0's relocate change,
    the new ones after; node0 deletes the old warm objects once both nodes have applied it;
    node1 then reads every byte from a cold cache, and fsck is clean on both."""
    lifecycle = {**SETTINGS["lifecycle"], "interval": 1}  # node0's own mover applies the policies
    a, b = _cluster(make_mount, moto_server.endpoint, 2, first={"lifecycle": lifecycle})
    manifest = {}
    for step in range(3):
        path = a.path / "llama" / "run1" / f"checkpoint-{(step + 1) * 100}" / "model.safetensors"
        bf16_checkpoint(path, seed=0, step=step + 1)  # a training run: the older two become deltas
        there = b.path / path.relative_to(a.path)
        _wait_same(path, there, "node1")
        manifest[str(there)] = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with Repository(a.repo, writable=False) as repo, repo.index.read() as t:
        old = {pack_name(p) for p, i in t.packs() if i.group == "/llama/run1"}
    assert len(old) >= 3 * 16, "1 MiB packs of three 16 MiB checkpoints"
    stopfile = tmp_path / "stop"
    verifiers = [loadworkers.spawn("verifier", tmp_path / "manifest.json", stopfile) for _ in range(2)]
    try:
        chunkfs("run", "complete", a.path / "llama" / "run1")
        deadline = time.monotonic() + 120
        while True:
            status = json.loads(chunkfs("status", "--repo", a.repo, "--json").stdout)["cluster"]
            stored = a.run_usage("/llama/run1")["stored"]
            if set(stored) == {"warm"} and status["retiring_packs"] == 0:
                break
            assert time.monotonic() < deadline, f"not re-encoded and relocated everywhere: {stored}, {status}"
            assert all(p.poll() is None for p in verifiers), "a verifier stopped early"
            time.sleep(0.5)
    finally:
        stopfile.touch()
    failures = loadworkers.failures(verifiers)
    assert not failures, "\n".join(failures)
    with Repository(a.repo, writable=False) as repo:
        assert not old & set(repo.tiers.backend(Tier.WARM).list("packs/")), "the old packs are deleted from warm"
        with repo.index.read() as t:
            deltas = dict(t.deltas())
    assert deltas, "the older checkpoints are stored as deltas"
    with Repository(b.repo, writable=False) as repo, repo.index.read() as t:
        assert dict(t.deltas()) == deltas, "node1 learnt every base from the relocate changes"
    b.remount_cold()
    for path, digest in manifest.items():
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest, f"{path} changed"
    for m in (a, b):
        report = json.loads(chunkfs("fsck", "--repo", m.repo, "--json").stdout)
        assert report["problems"] == [], report["problems"]
