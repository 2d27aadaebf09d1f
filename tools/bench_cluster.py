#!/usr/bin/env python3
"""A repository shared by several nodes, measured on loopback S3: log size, publish, replay, join.

    python tools/bench_cluster.py [--nodes 4] [--checkpoints 8] [--size 64M] [--changed 0.1]
                                  [--chunk-size 4M] [--endpoint URL] [--work DIR] [--json FILE]

NODES repositories on this machine share one repository through one S3 server (moto's, in
this process, unless ``--endpoint`` names another; credentials from the environment then).
Each checkpoint is one safetensors shard per node (SIZE bytes each, bf16, a fraction
CHANGED of the tensors new from the previous step: a fine-tune with a frozen part), written
into ``/bench/run/checkpoint-<k>/shard-<node>.safetensors`` of that node's repository, which
then removes its shard of checkpoint k-2 (``save_total_limit=2``). Per
checkpoint: every node publishes (``chunkfs sync``: its packs to warm, then its log entry),
then every node applies the others' entries. Then a new node joins and replays the whole
log; then ``chunkfs gc --keep-last 2`` runs on node 0 while the other nodes sync once a
second (as their mounts would): its time from the gc entry to the last node's sweep, what
it dropped and freed on warm, and how far it truncated the log; and a node joins again
(from the creating node's metadata backup, after the truncation); then every node's tier
mover re-encodes its packs of the run on the way to warm, one node at a time, and the
others follow the relocate changes until the old warm objects are deleted. The figures per
checkpoint are log bytes and entries, publish and replay times;
the log's size is extrapolated to docs/multinode.md's 70B-parameter case (1 TB a
checkpoint, 16 nodes, 1,000 checkpoints) by bytes of log per chunk. Figures go in
docs/multinode.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchlib as bl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chunkfs import config
from chunkfs.cluster.log import LOG
from chunkfs.ops import cluster as clusterop
from chunkfs.ops import gc, retention, tier, transfer
from chunkfs.repo import Repository
from chunkfs.types import Tier

BUCKET = "chunkfs-bench"
BIG = {"checkpoint_bytes": 10**12, "nodes": 16, "checkpoints": 1000}


def store(endpoint: str | None):
    """(endpoint, stop): moto's server in this process unless an endpoint is given."""
    if endpoint:
        return endpoint, lambda: None
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}", server.stop


def new_shared(path: Path, endpoint: str, name: str, chunk_size: int) -> tuple[str, Repository]:
    """A new shared repository at ``path`` (its first node, open) whose warm tier is
    ``s3://BUCKET/<name>-<time>`` on ``endpoint``; (that URL, the repository)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    url = f"s3://{BUCKET}/{name}-{int(time.time())}"
    settings = config.Settings(
        chunking=config.ChunkingSettings(chunk_size=chunk_size),
        tiers=config.TierSettings(warm=url, endpoint_url=endpoint),
    )
    return url, clusterop.init_shared(path, settings)


def _log_bytes(repo: Repository) -> tuple[int, int]:
    """(entries, bytes) of the shared log."""
    backend = repo.cluster.shared.backend
    names = list(backend.list(LOG))
    return len(names), sum(backend.size(n) for n in names)


def _warm_bytes(node: Path) -> int:
    with Repository(node, writable=False) as repo:
        backend = repo.tiers.backend(Tier.WARM)
        return sum(backend.size(n) for n in backend.list("packs/"))


def _gc(nodes: list[Path]) -> dict:
    """``chunkfs gc --keep-last 2`` on the first node while the others sync (their mounts' part)."""
    warm_before = _warm_bytes(nodes[0])
    out: dict = {}

    def run() -> None:
        with Repository(nodes[0]) as repo:
            out["result"] = gc.run(repo, retention.rules_for(repo.settings, keep_last=2), grace_s=0)

    thread = threading.Thread(target=run)
    t0 = time.monotonic()
    thread.start()
    while thread.is_alive():
        for node in nodes[1:]:
            tier.sync(node)
        time.sleep(0.5)
    thread.join()
    gc_s = time.monotonic() - t0
    for _ in range(2):  # every node applies the sweep; then each deletes its own emptied packs from warm
        for node in nodes:
            tier.sync(node)
    r = out["result"]
    return {"gc_s": gc_s, "versions_dropped": r.versions_dropped, "chunks_condemned": r.chunks_condemned,
            "chunks_swept": r.chunks_swept, "waiting_for": r.cluster.get("waiting_for", []),
            "warm_before": warm_before, "warm_after": _warm_bytes(nodes[0]),
            "log_truncated": r.cluster.get("log_truncated", {}).get("entries", 0)}  # fmt: skip


def _reencode(nodes: list[Path]) -> dict:
    """Every node's tier mover re-encodes its packs of the (complete) run on the way to warm, one
    node at a time (the lease), then every node syncs until the old warm objects are gone: the
    relocate changes' log bytes, the re-encoding and apply times, warm bytes before and after."""
    warm_before = _warm_bytes(nodes[0])
    with Repository(nodes[0], writable=False) as repo:
        entries_before, bytes_before = _log_bytes(repo)
    moved = reencode_s = 0.0
    for node in nodes:
        with Repository(node) as repo:
            tier.complete(repo, "/bench/run")
            with repo.index.read() as t:
                own_hot = {p for p, i in t.packs() if i.tier == Tier.HOT}
                chunks = sum(1 for _, loc in t.chunks() if bytes(loc.pack) in own_hot)
            seconds, _ = bl.timed(tier.apply, repo, tier.plan(repo))
        moved += chunks
        reencode_s += seconds
        tier.sync(node)  # publishes its relocate changes once the new packs are on warm
    apply = [bl.timed(tier.sync, node)[0] for node in nodes]
    t0 = time.monotonic()
    while True:
        for node in nodes:
            tier.sync(node)
        retiring = 0
        for node in nodes:
            with Repository(node, writable=False) as repo, repo.index.read() as t:
                retiring += len(t.retiring())
        if not retiring or time.monotonic() - t0 > 120:
            break
        time.sleep(1)
    with Repository(nodes[0], writable=False) as repo:
        entries, nbytes = _log_bytes(repo)
    return {"chunks_relocated": moved, "reencode_s": reencode_s, "apply_s": bl.median(apply),
            "log_entries": entries - entries_before, "log_bytes": nbytes - bytes_before,
            "retired_left": retiring, "deleted_after_s": time.monotonic() - t0,
            "warm_before": warm_before, "warm_after": _warm_bytes(nodes[0])}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--checkpoints", type=int, default=8)
    p.add_argument("--size", default="64M", help="bytes of one node's shard of a checkpoint")
    p.add_argument("--changed", type=float, default=0.1, help="fraction of the tensors new at each step")
    p.add_argument("--chunk-size", default="4M")
    p.add_argument("--endpoint", help="an S3 endpoint with conditional writes (default: moto in this process)")
    p.add_argument("--work", type=Path, help="directory for the repositories (default: a temporary one)")
    p.add_argument("--json", type=Path, help="write the figures here too")
    args = p.parse_args()
    size, chunk = bl.parse_size(args.size), bl.parse_size(args.chunk_size)
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-", dir=args.work))
    endpoint, stop = store(args.endpoint)
    try:
        url, first = new_shared(work / "node0", endpoint, "cluster", chunk)
        first.close()
        nodes = [work / "node0"]
        for i in range(1, args.nodes):
            clusterop.join(work / f"node{i}", url, endpoint_url=endpoint)[0].close()
            nodes.append(work / f"node{i}")
        layout = bl.random_layout(size, __import__("numpy").random.default_rng(0))
        _, spans = bl.safetensors_header(layout)
        rows, before = [], (0, 0)
        src = work / "src"
        src.mkdir()
        for k in range(args.checkpoints):
            publish, apply = [], []
            for i, node in enumerate(nodes):
                shard = src / f"shard-{i}-{k}.safetensors"
                base = src / f"shard-{i}-{k - 1}.safetensors" if k else None
                change = bl.pick_fraction(spans, args.changed, seed=1000 * k + i) if k else frozenset()
                bl.write_safetensors(shard, layout, seed=1000 * k + i, base=base, change=change)
                with Repository(node) as repo:
                    transfer.import_tree(repo, shard, f"/bench/run/checkpoint-{k}/shard-{i}.safetensors")
                    if k >= 2:  # the trainer keeps the last two (save_total_limit=2)
                        repo.ns.unlink(repo.ns.resolve(f"/bench/run/checkpoint-{k - 2}"), f"shard-{i}.safetensors".encode())
                if base is not None:
                    base.unlink()
                publish.append(bl.timed(tier.sync, node)[0])
            for node in nodes:
                apply.append(bl.timed(tier.sync, node)[0])
            with Repository(nodes[0], writable=False) as repo:
                entries, nbytes = _log_bytes(repo)
            rows.append({"checkpoint": k, "log_entries": entries - before[0], "log_bytes": nbytes - before[1],
                         "publish_s": bl.median(publish), "apply_s": bl.median(apply)})  # fmt: skip
            before = (entries, nbytes)
            bl.log(f"checkpoint {k}: {rows[-1]}")
        t0 = time.monotonic()
        joined, position = clusterop.join(work / "late", url, endpoint_url=endpoint)
        join_s = time.monotonic() - t0
        joined.close()
        index_bytes = [(n / "index" / "data.mdb").stat().st_size for n in [*nodes, work / "late"]]
        collected = _gc([*nodes, work / "late"])  # the joined node is a member: the sweep waits for it too
        t0 = time.monotonic()
        clusterop.join(work / "after-gc", url, endpoint_url=endpoint)[0].close()
        collected["join_after_s"] = time.monotonic() - t0
        relocated = _reencode([*nodes, work / "late", work / "after-gc"])  # every member follows
    finally:
        stop()
        shutil.rmtree(work, ignore_errors=True)

    checkpoint_bytes = size * args.nodes
    chunks = checkpoint_bytes / chunk
    log_per_ckpt = bl.median(r["log_bytes"] for r in rows)
    per_chunk = log_per_ckpt / chunks
    big_chunks = BIG["checkpoint_bytes"] / chunk
    result = {
        "version": bl.code_version(), "nodes": args.nodes, "checkpoints": args.checkpoints, "shard_bytes": size,
        "changed": args.changed, "chunk_size": chunk, "rows": rows, "join_s": join_s, "join_position": position,
        "index_bytes": index_bytes, "log_bytes_per_chunk": per_chunk, "gc": collected, "reencode": relocated,
        "extrapolated_70b": {"log_bytes_per_checkpoint": per_chunk * big_chunks,
                             "log_bytes_1000_checkpoints": per_chunk * big_chunks * BIG["checkpoints"]},
    }  # fmt: skip
    bl.print_table(
        f"shared repository: {args.nodes} nodes, {bl.fmt(size / 2**20)} MiB a node and checkpoint, "
        f"{args.changed:.0%} changed, {chunk >> 20} MiB chunks",
        ["checkpoint", "log entries", "log KiB", "publish s (median node)", "apply s (median node)"],
        [[r["checkpoint"], r["log_entries"], r["log_bytes"] / 1024, r["publish_s"], r["apply_s"]] for r in rows],
        note=f"a new node joined (replayed {position} entries) in {join_s:.2f} s; index per node "
        f"{bl.fmt(bl.median(index_bytes) / 2**20)} MiB; {per_chunk:.0f} log bytes per chunk of a checkpoint",
    )
    print(f"gc --keep-last 2 on node 0 while the other nodes sync: {collected['gc_s']:.1f} s to the sweep "
          f"({collected['versions_dropped']} versions dropped, {collected['chunks_swept']} chunks swept, warm "
          f"{collected['warm_before'] / 2**20:.0f} → {collected['warm_after'] / 2**20:.0f} MiB once every node "
          f"applied it; log truncated by {collected['log_truncated']} entries); a node joined after it in "
          f"{collected['join_after_s']:.2f} s")  # fmt: skip
    r = relocated
    print(f"every node re-encodes its packs of the run on the way to warm, one at a time: {r['reencode_s']:.1f} s "
          f"in all, {r['chunks_relocated']:.0f} chunks relocated in {r['log_entries']} log entries, "
          f"{r['log_bytes'] / 1024:.0f} KiB ({r['log_bytes'] / max(1, r['chunks_relocated']):.0f} B a chunk); "
          f"applied in {r['apply_s']:.2f} s a node (median); the old warm objects deleted "
          f"{r['deleted_after_s']:.1f} s later ({r['retired_left']} left); warm "
          f"{r['warm_before'] / 2**20:.0f} → {r['warm_after'] / 2**20:.0f} MiB")  # fmt: skip
    big = result["extrapolated_70b"]
    print(f"70B case ({BIG['nodes']} nodes, 1 TB a checkpoint, {chunk >> 20} MiB chunks): "
          f"~{big['log_bytes_per_checkpoint'] / 1e6:.0f} MB of log a checkpoint, "
          f"~{big['log_bytes_1000_checkpoints'] / 1e9:.0f} GB for 1,000 checkpoints if no gc truncated it "
          "(log bytes scale with chunks; fixed costs make small runs over-estimate them)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
