"""The tier acceptance through a mount: runs written by real writers into a mounted chunkfs whose
warm tier is a real S3 server on loopback (moto, or ``rclone serve s3`` where the test stops it).

Each test drives the daemon only the ways users do — files through the mount, the CLI
(`run complete`, `sync`, `tier`, `prefetch --pin`, `status`), the daemon's Prometheus
endpoint — and checks what the issue asks for: a completed run leaves the hot tier and
reads back bit-identical from S3 with every cache dropped; a pinned model is read with no
S3 request; writes go on while S3 is down and the queue drains once it is back.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
from helpers.cli import chunkfs
from helpers.repos import same_tree
from helpers.s3fixtures import aws_env, moto_server, own_rclone  # noqa: F401 (fixtures)
from helpers.s3servers import free_port
from helpers.tiers import s3_url, write_run

RUN = "llama/run1"


def _tiered_mount(
    make_mount, endpoint: str, *, metrics_port: int | None = None, tiers: dict | None = None, **more
):
    """A mount with small chunks and 1 MiB packs, a warm tier at ``endpoint`` (and ``tiers``),
    runs complete only when marked, an open pack sealed at the daemon's next round, no policy
    rounds of its own (the tests run `chunkfs tier`) and no hot-pressure evictions (``more``:
    other arguments of ``make_mount`` and lifecycle settings)."""
    lifecycle = {"run_idle": 0, "seal_quiet": 0, "interval": 0, "hot_min_free": more.pop("hot_min_free", 0)}
    settings = {
        "chunking": {"chunk_size": 256 << 10, "min_chunk": 16 << 10},
        "packs": {"target_size": 1 << 20},
        "tiers": {"warm": s3_url("mount"), "endpoint_url": endpoint, **(tiers or {})},
        "lifecycle": lifecycle,
    }
    args = ["--metrics", f"127.0.0.1:{metrics_port}"] if metrics_port else []
    return make_mount(settings=settings, args=args, **more)


def _write_run(m, tmp_path: Path) -> Path:
    """Write the same run of checkpoints (torch.save, safetensors, trainer state) into the mount
    and into a plain directory; return the plain one, checked equal to what the mount holds."""
    src = write_run(tmp_path / "src", "run1", steps=2)
    written = write_run(m.path / "llama", "run1", steps=2)
    same_tree(src, written)
    return src


def _status(m) -> dict:
    return json.loads(chunkfs("status", "--repo", m.repo, "--json").stdout)


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _run_stored(m) -> dict[str, int]:
    """Bytes of the run's packs per tier, as `chunkfs du` reports them."""
    return m.run_usage(f"/{RUN}")["stored"]


def _hot_packs(m) -> list[Path]:
    return sorted((m.repo / "hot").rglob("*.pack"))


def _complete_and_tier_to_warm(m) -> None:
    """`run complete`, wait for the daemon to seal the run's open pack and upload every pack,
    then `chunkfs tier`: the run's packs move to warm and their hot files are deleted."""
    chunkfs("run", "complete", m.path / RUN)

    def everything_warm() -> bool:
        chunkfs("sync", "--repo", m.repo, "--timeout", "60")
        chunkfs("tier", "--repo", m.repo)
        return set(_run_stored(m)) == {"warm"}

    _wait(everything_warm, 60, "the run's packs to move to warm")
    assert _hot_packs(m) == [], "hot copies were not evicted"


def _remote_read_bytes(port: int) -> float:
    """The daemon's counter of bytes fetched from warm (the repository's, over every process)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found = re.search(r'^chunkfs_remote_read_bytes_total\{tier="warm"\} (\S+)$', text, re.MULTILINE)
    assert found, "the daemon's metrics have no remote read counter for warm"
    return float(found.group(1))


def test_run_tiered_to_warm_reads_back_through_the_mount_from_s3(
    make_mount, moto_server, tmp_path  # noqa: F811 — an imported fixture, requested by name
):
    port = free_port()
    m = _tiered_mount(make_mount, moto_server.endpoint, metrics_port=port)
    src = _write_run(m, tmp_path)
    _complete_and_tier_to_warm(m)

    m.remount_cold()
    before = _remote_read_bytes(port)
    same_tree(src, m.path / RUN)
    assert _remote_read_bytes(port) > before, "the checkpoint was not fetched from the warm tier"
    assert _hot_packs(m) == [], "a read brought packs back to hot"


def test_prefetch_pin_then_read_through_the_mount_makes_no_s3_request(
    make_mount, moto_server, tmp_path  # noqa: F811 — an imported fixture, requested by name
):
    port = free_port()
    m = _tiered_mount(make_mount, moto_server.endpoint, metrics_port=port)
    src = _write_run(m, tmp_path)
    _complete_and_tier_to_warm(m)

    m.remount_cold()
    result = json.loads(chunkfs("prefetch", m.path / RUN, "--pin", "--json").stdout)
    assert result["fetched_bytes"] > 0 and result["pinned"]
    m.remount()  # forget what the daemon itself may hold: only the pinned disk cache is left

    before = _remote_read_bytes(port)  # includes what `prefetch` fetched
    same_tree(src, m.path / RUN)
    assert _remote_read_bytes(port) == before, "a pinned model was read from S3"


def test_writes_go_on_while_s3_is_down_and_the_queue_drains_after(
    make_mount, own_rclone, tmp_path  # noqa: F811 — an imported fixture, requested by name
):
    m = _tiered_mount(make_mount, own_rclone.endpoint)
    m.expect_log(r"upload|warm tier")  # the uploader's complaints while S3 is down
    own_rclone.stop()
    src = _write_run(m, tmp_path)  # never waits for S3
    _wait(lambda: _status(m)["upload_error"] is not None, 60, "the daemon to notice S3 is down")
    backlog = _status(m)["upload_backlog"]
    assert backlog["packs"] > 0
    same_tree(src, m.path / RUN)  # everything written is there, from the hot tier

    own_rclone.start()  # same port, same directory
    done = chunkfs("sync", "--repo", m.repo, "--timeout", "120", "--json")
    assert json.loads(done.stdout)["by_daemon"]
    s = _status(m)
    assert s["upload_backlog"]["packs"] == 0 and s["upload_error"] is None
    assert s["tiers"]["warm"]["copies"] >= backlog["packs"]
    chunkfs("tier", "--repo", m.repo, "--check")

    _complete_and_tier_to_warm(m)  # nothing was lost: the run reads back from S3 alone
    m.remount_cold()
    same_tree(src, m.path / RUN)


def test_archived_cold_run_fails_fast_through_the_mount_until_thawed(
    make_mount, moto_server, tmp_path  # noqa: F811 — an imported fixture, requested by name
):
    glacier = {"cold": s3_url("glacier"), "cold_storage_class": "GLACIER"}
    m = _tiered_mount(make_mount, moto_server.endpoint, tiers=glacier)
    m.expect_log(r"chunkfs thaw")  # the daemon's ERROR line for the refused read names the command
    src = _write_run(m, tmp_path)
    _complete_and_tier_to_warm(m)
    chunkfs("tier", "move", m.path / RUN, "--to", "cold")
    assert set(_run_stored(m)) == {"cold"}
    m.remount_cold()

    started = time.monotonic()
    with pytest.raises(OSError) as refused:
        (m.path / RUN / "checkpoint-100" / "model.safetensors").read_bytes()
    assert refused.value.errno == errno.EIO
    assert time.monotonic() - started < 30, "a read of archived data waited instead of failing"
    assert f"must be restored first; run `chunkfs thaw /llama/run1 --repo {m.repo}`" in m.log(), m.log()

    done = chunkfs("thaw", m.path / RUN, "--json")
    assert json.loads(done.stdout)["packs"] > 0
    assert set(_run_stored(m)) == {"warm"}
    same_tree(src, m.path / RUN)


def test_the_daemon_makes_room_on_a_full_hot_disk(
    make_mount, moto_server, make_tmpfs, tmp_path  # noqa: F811 — an imported fixture, requested by name
):
    small_hot = make_tmpfs("8m")
    m = _tiered_mount(make_mount, moto_server.endpoint, hot=small_hot / "hot", hot_min_free=50)
    src = _write_run(m, tmp_path)  # 9.5 MB, about 5 MB stored (torch.save dedups against safetensors); not complete

    def free_percent() -> float:
        disk = shutil.disk_usage(small_hot)
        return 100 * disk.free / disk.total

    assert free_percent() < 50
    _wait(lambda: free_percent() >= 50, 90, "the daemon to evict uploaded packs")
    stored = _run_stored(m)
    assert stored["warm"] > 0 and stored.get("hot", 0) > 0, "only what was needed left hot"
    m.remount_cold()
    same_tree(src, m.path / RUN)


def test_run_complete_seals_at_once_and_nothing_says_done_while_data_waits(
    make_mount, moto_server, tmp_path  # noqa: F811 — an imported fixture, requested by name
):
    """With the default lifecycle (an open pack is sealed only after seal_quiet), `run complete`
    seals the run's open packs at once; before that, `tier` and `sync` say what waits, and why."""
    settings = {
        "chunking": {"chunk_size": 256 << 10, "min_chunk": 16 << 10},
        "tiers": {"warm": s3_url("waiting"), "endpoint_url": moto_server.endpoint},
        # no policy rounds of its own, not even when the machine's disk runs below 10% free
        # (hot_min_free: a CI run's mount once moved the run first): the test runs `chunkfs tier`
        "lifecycle": {"interval": 0, "hot_min_free": 0},
    }
    m = make_mount(settings=settings)
    _write_run(m, tmp_path)
    dry = chunkfs("tier", "--repo", m.repo, "--dry-run").stdout
    assert "nothing to move now" in dry and "not sealed yet" in dry, dry
    synced = chunkfs("sync", "--repo", m.repo, "--timeout", "60").stdout
    assert "not sealed yet" in synced, synced
    assert json.loads(chunkfs("status", "--repo", m.repo, "--json").stdout)["open_packs"]["packs"] >= 1

    chunkfs("run", "complete", m.path / RUN)
    assert json.loads(chunkfs("status", "--repo", m.repo, "--json").stdout)["open_packs"]["packs"] == 0
    chunkfs("sync", "--repo", m.repo, "--timeout", "60")
    done = json.loads(chunkfs("tier", "--repo", m.repo, "--json").stdout)
    assert done["waiting"] == "" and done["moved"]["hot→warm"]["packs"] >= 1
    assert set(_run_stored(m)) == {"warm"}, "every byte of the run moved"
