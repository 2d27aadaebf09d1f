#!/usr/bin/env python3
"""The shared log and index at a big model's scale, metadata only: join, index size, gc apply.

    python tools/bench_cluster_scale.py [--params 70e9] [--bytes-per-param 14] [--nodes 16]
                                        [--checkpoints 20] [--chunk-size 64M] [--pack-size 1G]
                                        [--endpoint URL] [--work DIR] [--json FILE]

What tools/bench_cluster.py measures with real bytes on a small model, this measures for
the metadata of a big one, which no machine here could write: a model of PARAMS
parameters saved at BYTES_PER_PARAM bytes each (14: bf16 weights, fp32 master weights and
two AdamW moments — a 70B model's checkpoint is ~1 TB), sharded over NODES nodes, every
chunk new at every checkpoint (a full fine-tune: the worst case for the index). For each
checkpoint each node's log entry (a file per node: its creation and its content, one
extent per chunk, with every chunk's pack location) is written straight into a shared
repository's log on loopback S3, as that node's publisher would; no pack bytes exist.

Then a new node joins and replays the whole log (the time and its index size), and applies a
gc entry that drops the oldest checkpoint (what every node pays for one gc: the mark of its
whole index). Figures scale linearly in the checkpoints: the table extrapolates them to
1,000. Figures go in docs/multinode.md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import benchlib as bl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_cluster import new_shared, store

from chunkfs import clock
from chunkfs.cluster import entries
from chunkfs.cluster.maintenance import apply_gc, version_key
from chunkfs.ops import cluster as clusterop
from chunkfs.types import ChunkLocation, PackInfo, PackState, Tier

TARGET = 1000


def _entry(node: str, k: int, i: int, size: int, chunk: int, pack_size: int) -> tuple[bytes, list[bytes]]:
    """Node ``i``'s entry for checkpoint ``k``: one file of ``size`` bytes, every chunk new."""
    path = f"/llama/run/checkpoint-{k}/shard-{i}.bin"
    n = max(1, size // chunk)
    chunks = [secrets.token_bytes(32) for _ in range(n)]
    per_pack = max(1, pack_size // chunk)
    packs, locations = {}, {}
    for j, c in enumerate(chunks):
        if j % per_pack == 0:
            pack = secrets.token_bytes(16)
            count = min(per_pack, n - j)
            packs[pack] = PackInfo(Tier.WARM, PackState.SEALED, count * chunk, count, "/llama/run", clock.now_ns())
        locations[c] = ChunkLocation(pack, (j % per_pack) * chunk, chunk, chunk, 0)
    ops = [
        {"op": "create", "path": path, "mode": 0o100644, "uid": 0, "gid": 0, "rdev": 0, "target": "", "versioned": True},
        {"op": "content", "path": path, "extents": [[chunk, c.hex()] for c in chunks], "mtime_ns": clock.now_ns(),
         "blake3": secrets.token_hex(32), "writer_uid": 0},
    ]  # fmt: skip
    entry = entries.Entry(node, clock.now_ns(), (1, 2), ops, packs, locations)
    return entries.encode(entry), chunks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=float, default=70e9)
    p.add_argument("--bytes-per-param", type=float, default=14)
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--checkpoints", type=int, default=20)
    p.add_argument("--chunk-size", default="64M")
    p.add_argument("--pack-size", default="1G")
    p.add_argument("--endpoint", help="an S3 endpoint with conditional writes (default: moto in this process)")
    p.add_argument("--work", type=Path, help="directory for the repositories (default: a temporary one)")
    p.add_argument("--json", type=Path, help="write the figures here too")
    args = p.parse_args()
    chunk, pack_size = bl.parse_size(args.chunk_size), bl.parse_size(args.pack_size)
    checkpoint = int(args.params * args.bytes_per_param)
    shard = checkpoint // args.nodes
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-scale-", dir=args.work))
    endpoint, stop = store(args.endpoint)
    try:
        url, origin = new_shared(work / "node0", endpoint, "scale", chunk)
        shared = origin.cluster.shared
        origin.close()
        nodes = [secrets.token_hex(8) for _ in range(args.nodes)]
        position, log_bytes, first_chunks = 0, 0, []
        t0 = time.monotonic()
        for k in range(args.checkpoints):
            for i, node in enumerate(nodes):
                data, chunks = _entry(node, k, i, shard, chunk, pack_size)
                position += 1
                if not shared.append(position, data):
                    raise SystemExit(f"log entry {position} exists already")
                log_bytes += len(data)
                if k == 0:
                    first_chunks += chunks
            bl.log(f"checkpoint {k}: {position} entries, {log_bytes / 2**20:.1f} MiB of log")
        write_s = time.monotonic() - t0
        t0 = time.monotonic()
        joined, applied = clusterop.join(work / "joined", url, endpoint_url=endpoint)
        join_s = time.monotonic() - t0
        index_bytes = (work / "joined" / "index" / "data.mdb").stat().st_size
        oldest = "/llama/run/checkpoint-0"
        files = [(os.fsdecode(name), ino) for name, ino, _rec in joined.ns.readdir(joined.ns.resolve(oldest))]
        with joined.index.read() as t:  # its versions, as the gc node names them
            drops = [version_key(f"{oldest}/{name}", v.record.size, v.blake3) for name, ino in files for v in t.versions(ino)]
        for name, _ino in files:  # the trainer removed it (a current version is never dropped)
            joined.ns.unlink(joined.ns.resolve(oldest), name.encode())
        t0 = time.monotonic()
        with joined.index.write() as t:
            apply_gc(t, {"drops": drops, "condemn": [c.hex() for c in first_chunks]}, applied + 1)
        gc_apply_s = time.monotonic() - t0
        with joined.index.read() as t:
            condemned = t.condemned_count()
        joined.close()
    finally:
        stop()
        shutil.rmtree(work, ignore_errors=True)

    scale = TARGET / args.checkpoints
    chunks_per_ckpt = args.nodes * max(1, shard // chunk)
    result = {
        "version": bl.code_version(), "params": args.params, "checkpoint_bytes": checkpoint, "nodes": args.nodes,
        "checkpoints": args.checkpoints, "chunk_size": chunk, "chunks_per_checkpoint": chunks_per_ckpt,
        "log_entries": position, "log_bytes": log_bytes, "write_s": write_s, "join_s": join_s,
        "index_bytes": index_bytes, "gc_apply_s": gc_apply_s, "condemned": condemned,
        "at_1000": {"log_bytes": log_bytes * scale, "index_bytes": index_bytes * scale, "join_s": join_s * scale,
                    "gc_apply_s": gc_apply_s * scale},
    }  # fmt: skip
    big = result["at_1000"]
    bl.print_table(
        f"{args.params / 1e9:.0f}B parameters × {args.bytes_per_param:g} B = {checkpoint / 1e12:.2f} TB a checkpoint, "
        f"{args.nodes} nodes, {chunk >> 20} MiB chunks ({chunks_per_ckpt} a checkpoint), every chunk new",
        ["", f"{args.checkpoints} checkpoints (measured)", f"{TARGET} checkpoints (× {scale:g})"],
        [
            ["log", f"{position} entries, {log_bytes / 2**20:.1f} MiB", f"{big['log_bytes'] / 2**30:.1f} GiB"],
            ["index of a node", f"{index_bytes / 2**20:.1f} MiB", f"{big['index_bytes'] / 2**30:.1f} GiB"],
            ["a new node's join (replay)", f"{join_s:.1f} s", f"{big['join_s'] / 60:.0f} min"],
            ["a gc entry, applied on a node", f"{gc_apply_s:.2f} s ({condemned} chunks condemned)",
             f"{big['gc_apply_s']:.0f} s"],
        ],
        note="join from a metadata backup replays only the entries after it; truncation keeps the log short",
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
