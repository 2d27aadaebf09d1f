"""One entry of the shared log: a node's batch of namespace changes, and where their chunks are.

An entry is zstd-compressed JSON behind a magic, so that a damaged or foreign object is
refused with its name rather than half-applied::

    {"node": id, "time_ns": …, "seqs": [first, last],       # the outbox records it carries
     "ops": [change, …],                                     # namespace/journal.py records
     "packs": {pack hex: [size, chunk count, group, created ns]},
     "chunks": {chunk hex: [pack hex, offset, stored length, raw length, flags]},
     "kind": "gc" | "sweep", "body": {…}}                   # maintenance entries only

An entry without ``kind`` carries changes. A ``gc`` entry (one node's ``chunkfs gc``) has
``body = {"drops": [[path, size, BLAKE3 hex], …], "condemn": [chunk hex, …]}``, a
``sweep`` entry ``{"round": its gc entry, "chunks": [chunk hex, …]}`` — every node applies
them to its own index (cluster/maintenance.py); a ``forget`` entry ``{"node": id}`` removes a
member for good: every node ignores that member's entries after it.

``packs`` and ``chunks`` locate every chunk the entry's contents reference, in packs that
are on the warm tier: a node applying the entry records them (home: warm) and can read
every file it names without asking anyone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import zstandard

from chunkfs.errors import CorruptData
from chunkfs.types import ChunkLocation, PackInfo, PackState, Tier

MAGIC = b"CFSLOG1\n"
CHANGES, GC, SWEEP, FORGET = "changes", "gc", "sweep", "forget"


@dataclass
class Entry:
    node: str
    time_ns: int
    seqs: tuple[int, int]
    ops: list[dict]
    packs: dict[bytes, PackInfo] = field(default_factory=dict)
    chunks: dict[bytes, ChunkLocation] = field(default_factory=dict)
    kind: str = CHANGES
    body: dict = field(default_factory=dict)


def encode(entry: Entry) -> bytes:
    doc = {
        "node": entry.node,
        "time_ns": entry.time_ns,
        "seqs": list(entry.seqs),
        "ops": entry.ops,
        "packs": {p.hex(): [i.size, i.chunks, i.group, i.created_ns] for p, i in entry.packs.items()},
        "chunks": {
            c.hex(): [bytes(loc.pack).hex(), loc.offset, loc.stored_len, loc.raw_len, loc.flags]
            for c, loc in entry.chunks.items()
        },
    }
    if entry.kind != CHANGES:
        doc["kind"], doc["body"] = entry.kind, entry.body
    return MAGIC + zstandard.ZstdCompressor(level=3).compress(json.dumps(doc, separators=(",", ":")).encode())


def decode(data: bytes, where: str) -> Entry:
    if not data.startswith(MAGIC):
        raise CorruptData(f"{where}: not a chunkfs log entry (bad magic)")
    try:
        doc = json.loads(zstandard.ZstdDecompressor().decompress(data[len(MAGIC) :], max_output_size=1 << 34))
        packs = {
            bytes.fromhex(p): PackInfo(Tier.WARM, PackState.SEALED, int(size), int(n), str(group), int(created))
            for p, (size, n, group, created) in doc["packs"].items()
        }
        chunks = {
            bytes.fromhex(c): ChunkLocation(bytes.fromhex(p), int(off), int(stored), int(raw), int(flags))
            for c, (p, off, stored, raw, flags) in doc["chunks"].items()
        }
        first, last = doc["seqs"]
        ops = doc["ops"]
        if not isinstance(ops, list) or not all(isinstance(op, dict) and "op" in op for op in ops):
            raise ValueError("ops is not a list of changes")
        kind, body = str(doc.get("kind", CHANGES)), doc.get("body", {})
        if kind not in (CHANGES, GC, SWEEP, FORGET) or not isinstance(body, dict):
            raise ValueError(f"unknown kind of entry {kind!r} (written by a newer chunkfs?)")
        return Entry(str(doc["node"]), int(doc["time_ns"]), (int(first), int(last)), ops, packs, chunks, kind, body)
    except (zstandard.ZstdError, ValueError, KeyError, TypeError) as e:
        raise CorruptData(f"{where}: damaged log entry ({e}); the log cannot be replayed past it") from None
