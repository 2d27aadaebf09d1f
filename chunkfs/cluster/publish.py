"""Publishing this node's journaled changes to the shared log, once their bytes are on warm.

A change is published only when every chunk its content names is in a pack that is sealed
and has a verified copy on the warm tier (or lives there): another node can then read
everything an entry names even if this node dies the moment after (docs/multinode.md,
"Writing: local first, published after"). Until then the change is visible on this node
only. Changes go out in journal order; the first one whose bytes are not on warm yet holds
back the ones after it (an entry never reorders a node's own changes), and the creation of
its file too when that is still unpublished: a file shows up elsewhere with its content.

The entry goes to position *applied + 1* with a conditional write: when another node took
that position first, the publisher catches up on the log and tries again at the next one.
An open pack that holds back a change for ``SEAL_AFTER`` seconds is sealed (through the
writers' seal request, the one gc uses) so that the write-back can upload it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from chunkfs import clock
from chunkfs.cluster import entries
from chunkfs.cluster.log import SharedLog
from chunkfs.cluster.replay import Replayer
from chunkfs.index import Index, Txn
from chunkfs.namespace.journal import decode_extents
from chunkfs.types import ChunkLocation, PackInfo, PackState, Tier

log = logging.getLogger(__name__)

MAX_OPS = 4096
"""Changes in one entry at most (an entry is one object; a few MB at most)."""
SEAL_AFTER = 1.0
"""Seconds a change may wait on an open pack before the publisher asks the writers to seal."""
HOLE = bytes(32)


class Publisher:
    """Writes this node's outbox to the log in entries, after the packs they need are on warm."""

    def __init__(self, index: Index, shared: SharedLog, node: str, replayer: Replayer, wake_uploader: Callable[[], None]):
        self.index = index
        self.shared = shared
        self.node = node
        self.replayer = replayer
        self.wake_uploader = wake_uploader
        self._sealed_at = 0.0
        self.waiting = ""  # why the oldest change is not published yet ("" when nothing waits)

    def publish(self, attempts: int = 5) -> tuple[int, int]:
        """Apply what others published, then publish what is ready; returns (changes sent, the
        log position applied here)."""
        sent = 0
        for _ in range(attempts):
            applied = self.replayer.catch_up()
            entry, seqs = self._ready()
            if entry is None:
                return sent, applied
            if not self.shared.append(applied + 1, entries.encode(entry)):
                continue  # another node wrote that position first: catch up, try the next
            with self.index.write() as t:
                t.outbox_delete(seqs)
                t.applied_put(applied + 1)
            sent += len(seqs)
            log.debug("published %d changes as log entry %d", len(seqs), applied + 1)
        return sent, self.replayer.catch_up()

    def _ready(self) -> tuple[entries.Entry | None, list[int]]:
        """The longest prefix of the outbox whose chunks are all on warm, as an entry."""
        packs: dict[bytes, PackInfo] = {}
        chunks: dict[bytes, ChunkLocation] = {}
        ops, seqs = [], []
        self.waiting = ""
        with self.index.read() as t:
            for seq, time_ns, op in t.outbox(MAX_OPS):
                held = self._locate(t, op, packs, chunks) if op["op"] in ("content", "relocate") else None
                if held is not None:
                    self._unblock(held, time_ns)
                    keep = _before_creation(ops, op["path"]) if "path" in op else len(ops)
                    del ops[keep:], seqs[keep:]
                    break
                ops.append(op)
                seqs.append(seq)
        if not ops:
            return None, []
        used = {bytes(loc.pack) for loc in chunks.values()}
        entry = entries.Entry(
            self.node, clock.now_ns(), (seqs[0], seqs[-1]), ops, {p: packs[p] for p in used}, chunks
        )
        return entry, seqs

    def _locate(self, t: Txn, op: dict, packs: dict, chunks: dict) -> tuple[str, PackInfo | None] | None:
        """Add the locations of the chunks a content names (or a relocate moved); None when all
        are on warm, else what holds it back."""
        relocate = op["op"] == "relocate"
        what = op.get("path", "relocated chunks")
        found = {}
        if relocate:
            named = (bytes.fromhex(c) for c in op["chunks"])
        else:
            named = (bytes(e.chunk) for e in decode_extents(op["extents"]))
        for chunk in named:
            if chunk == HOLE or chunk in chunks or chunk in found:
                continue
            # condemned here since the change (a gc entry dropped the version; docs/multinode.md): its
            # bytes stay until a sweep, which waits for this publish, and every node applying it revives it
            loc = t.chunk_get(chunk) or t.condemned_location(chunk)
            if loc is None and relocate:  # swept since: no node locates it any more
                continue
            if loc is None:
                return (f"chunk {chunk.hex()[:16]} of {what} is not in the index", None)
            info = packs.get(bytes(loc.pack)) or t.pack_get(loc.pack)
            if info is None:
                return (f"pack {bytes(loc.pack).hex()} of {what} is not in the index", None)
            if info.state != PackState.SEALED:
                return (f"{what}: pack {bytes(loc.pack).hex()} is still open", info)
            if info.tier == Tier.HOT and t.copy_get(loc.pack, Tier.WARM) is None:
                return (f"{what}: pack {bytes(loc.pack).hex()} is not on the warm tier yet", info)
            packs[bytes(loc.pack)] = info
            found[chunk] = loc
        chunks.update(found)
        return None

    def _unblock(self, held: tuple[str, PackInfo | None], time_ns: int) -> None:
        """Have the pack that holds a change back sealed (after ``SEAL_AFTER``) or uploaded."""
        why, info = held
        self.waiting = why
        if info is None:
            log.warning("cannot publish: %s", why)
        elif info.state != PackState.SEALED:
            waited = (clock.now_ns() - time_ns) / 1e9
            if waited >= SEAL_AFTER and time.monotonic() - self._sealed_at >= SEAL_AFTER:
                self._sealed_at = time.monotonic()
                with self.index.write() as t:
                    t.seal_request_put(clock.now_ns())
        else:
            self.wake_uploader()


def _before_creation(ops: list[dict], path: str) -> int:
    """Where to end an entry whose next change, the content of ``path``, must wait: before the
    file's creation when that is in the entry (followed through renames: safetensors creates
    a temporary name, renames it, then writes), so that no node sees the file empty first."""
    for i in range(len(ops) - 1, -1, -1):
        op = ops[i]
        if op["op"] == "rename" and op["to"] == path:
            path = op["path"]
        elif op["op"] == "create" and op["path"] == path:
            return i if not op["versioned"] else len(ops)
    return len(ops)
