"""A complete run re-encoded on its way to warm while the mount is busy (docs/tiers.md, "Re-encoding").

The daemon's tier mover replaces every hot pack of the run by new, smaller packs on warm
(S3 on loopback; all checkpoints but the newest stored as deltas of the next) and deletes the old ones, batch by batch, while other processes read the
run's files (random ranges and whole, each byte checked, the page cache dropped after
each file so that every pass asks the daemon again), list its directories, and trainers
save checkpoints of another run by fsync + rename. Nobody may see a wrong byte or an
error; afterwards the run reads back from warm alone, fsck finds every chunk intact, and
the other run's saves are the last ones made.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

from helpers import loadworkers
from helpers.cli import chunkfs
from helpers.s3fixtures import aws_env, moto_server  # noqa: F401 (fixtures)
from helpers.tiers import bf16_checkpoint, s3_url

RUN = "llama/run1"
CHECKPOINTS = 6
SAVES = 25  # per trainer of the other run


def test_a_run_re_encoded_to_warm_under_readers_listers_and_writers_loses_nothing(
    make_mount, moto_server, tmp_path  # noqa: F811 (fixture)
):
    m = make_mount(settings={
        "chunking": {"chunk_size": 256 << 10, "min_chunk": 16 << 10},
        "packs": {"target_size": 1 << 20},
        "tiers": {"warm": s3_url("reencode-load"), "endpoint_url": moto_server.endpoint},
        # runs complete only when marked; the daemon's own rounds apply the policies
        "lifecycle": {"run_idle": 0, "seal_quiet": 0, "interval": 1, "hot_min_free": 0},
    })  # fmt: skip
    manifest = {}
    for step in range(CHECKPOINTS):
        path = m.path / RUN / f"checkpoint-{(step + 1) * 100}" / "model.safetensors"
        bf16_checkpoint(path, seed=0, step=step)  # a training run: all but the newest stored as deltas
        manifest[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    other = m.path / "other" / "job"
    other.mkdir(parents=True)
    stopfile = tmp_path / "stop"
    procs = [loadworkers.spawn("verifier", tmp_path / "manifest.json", stopfile) for _ in range(2)]
    procs += [loadworkers.spawn("lister", Path(p).parent, 300, stopfile) for p in list(manifest)[:2]]
    procs += [loadworkers.spawn("writer", other, w, SAVES) for w in range(2)]
    try:
        chunkfs("run", "complete", m.path / RUN)
        deadline = time.monotonic() + 120
        while set((usage := m.run_usage(f"/{RUN}"))["stored"]) != {"warm"}:
            assert time.monotonic() < deadline, f"the run did not move to warm: {usage}"
            assert all(p.poll() is None for p in procs[:2]), "a verifier stopped early"
            time.sleep(0.5)
    finally:
        stopfile.touch()  # the verifiers finish the pass they are in, then stop
    failures = loadworkers.failures(procs)
    assert not failures, "\n".join(failures)

    assert usage["stored"]["warm"] < 0.9 * usage["logical_bytes"], f"the run was not re-encoded: {usage}"
    deltas = sum(row["chunks"] for name, row in usage["encodings"].items() if name.startswith("delta_"))
    assert deltas >= (CHECKPOINTS - 1) * 32, f"the older checkpoints are not deltas: {usage['encodings']}"
    moved = r"tier policy: hot→warm \d+ packs, [\d.]+ MB; re-encoded into \d+ warm packs"
    assert re.search(moved, m.log()), "the daemon's log does not say what its mover did"
    m.remount_cold()  # the run reads back from the re-encoded warm packs alone
    for path, digest in manifest.items():
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest, f"{path} changed"
    for w in range(2):
        assert (other / f"w{w}.bin").read_bytes() == loadworkers.content(w, SAVES - 1)
    report = json.loads(chunkfs("fsck", "--repo", m.repo, "--json").stdout)
    assert report["problems"] == [], report["problems"]
