#!/usr/bin/env python3
"""Summarise ``py-spy record --format raw`` output of the chunkfs daemon: where the time goes.

Each stack is attributed to one cost category by its leaf-most frame that
belongs to chunkfs or to a library the daemon runs on (trio, pyfuse3, lmdb …);
native calls (blake3, pwrite, fsync, zstd) appear as the Python line that made
them, so e.g. time inside BLAKE3 is attributed to ``codec.chunk_id``.

    python tools/pyspy_summary.py PROFILE.txt [MORE.txt …] [--top 15] [--json]

py-spy's idle filter does not catch every blocked thread here (a worker
parked on a lock shows up as busy), so leaf frames whose source line is a lock
acquisition (``with ….lock:``, ``.acquire(``) or an epoll wait are counted as
*waiting* and listed apart; the cost percentages are of the remaining (busy)
samples. With ``py-spy record --gil`` the samples are time holding the GIL,
i.e. the Python work that cannot run in parallel.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# (category, file substring, function regex or None). Checked for each frame, leaf first.
RULES: list[tuple[str, str, str | None]] = [
    ("read: BLAKE3 verify", "chunkfs/engine/codec.py", r"^chunk_id$@decode"),
    ("write: BLAKE3 hash", "chunkfs/engine/codec.py", r"^chunk_id$"),
    ("write: zstd test-compress", "chunkfs/engine/codec.py", r"^(encode|_compressor)$"),
    ("read: decode", "chunkfs/engine/codec.py", r"^(decode|_decompressor)$"),
    ("write: pack pwrite", "chunkfs/store/pack/files.py", r"^PackWriter\.(_write|append)$"),
    ("commit: pack fsync/seal", "chunkfs/store/pack/files.py", r"^PackWriter\.(sync|seal|close)$"),
    ("write: dedup lookup", "chunkfs/index/", r".@PackStore.locate"),
    ("read: chunk lookup (LMDB)", "chunkfs/index/", r".@read_stored"),
    ("commit: index (LMDB)", "chunkfs/index/", None),
    ("commit: index (LMDB)", "chunkfs/store/pack/store.py", r"^PackStore\.(flush|_writer|seal_all)$"),
    ("commit: index (LMDB)", "chunkfs/namespace/", None),
    ("write: dedup lookup", "chunkfs/store/pack/store.py", r"^PackStore\.locate$"),
    ("write: pack append bookkeeping", "chunkfs/store/pack/store.py", r"^PackStore\.append$"),
    ("read: pread from pack", "chunkfs/store/backends/base.py", None),
    ("read: pread from pack", "chunkfs/store/pack/store.py", r"^PackStore\.read_stored$"),
    ("write: zero check", "chunkfs/engine/chunks.py", r"^is_zero$"),
    ("read: chunk cache", "chunkfs/engine/chunks.py", r"^ChunkCache\."),
    ("chunk put/get", "chunkfs/engine/chunks.py", None),
    ("write: chunker buffer copies", "chunkfs/engine/chunker.py", None),
    ("write: format parser", "chunkfs/engine/formats/", None),
    ("read: FileContent.read copies", "chunkfs/engine/file.py", r"^FileContent\.(read|_extent_bytes)$"),
    ("write: FileContent (patches, holes, size)", "chunkfs/engine/file.py", None),
    ("open-file table (locks)", "chunkfs/openfiles.py", None),
    ("FUSE handlers (operations.py)", "operations.py", None),
    ("trio: thread hop + event loop", "trio/", None),
    ("trio: thread hop + event loop", "outcome/", None),
    ("pyfuse3: request dispatch", "pyfuse3", None),
    ("threads (idle/startup)", "threading.py", None),
]


def parse_frame(text: str) -> tuple[str, str]:
    m = FRAME.match(text.strip())
    return (m["func"], m["file"]) if m else (text.strip(), "")


_SOURCES: dict[str, list[str]] = {}


def source_line(file: str, line: int | None) -> str:
    """The text of ``file:line`` if the file can be found on sys.path (py-spy prints short paths)."""
    if line is None:
        return ""
    if file not in _SOURCES:
        _SOURCES[file] = []
        for root in [Path.cwd(), Path(__file__).resolve().parent.parent, *map(Path, sys.path)]:
            candidate = root / file
            if candidate.is_file():
                _SOURCES[file] = candidate.read_text(errors="replace").splitlines()
                break
    lines = _SOURCES[file]
    return lines[line - 1].strip() if 0 < line <= len(lines) else ""


def waiting(leaf: str) -> str | None:
    """The kind of wait a leaf frame is, or None if it is work."""
    m = FRAME.match(leaf.strip())
    if not m:
        return None
    func, file, line = m["func"], m["file"], int(m["line"]) if m["line"] else None
    if file.endswith("_io_epoll.py") and func.endswith("get_events"):
        return "wait: event loop idle (epoll)"
    text = source_line(file, line)
    if re.match(r"with\b.*\block\b", text) or ".acquire(" in text:
        return "wait: idle worker thread" if "_thread_cache.py" in file else "wait: lock"
    return None


def categorise(frames: list[tuple[str, str]]) -> str:
    names = {f for f, _ in frames}
    for func, file in reversed(frames):
        for cat, where, fre in RULES:
            if where not in file:
                continue
            if fre is None:
                return cat
            pattern, _, needs = fre.partition("@")
            if re.search(pattern, func) and (not needs or any(n == needs or n.endswith("." + needs) for n in names)):
                return cat
    return "other"


def load(paths: list[Path]) -> list[tuple[list[tuple[str, str]], list[str], int]]:
    stacks = []
    for path in paths:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            stack, _, count = line.rpartition(" ")
            raw = stack.split(";")
            stacks.append(([parse_frame(f) for f in raw], raw, int(count)))
    return stacks


def summarise(paths: list[Path], top: int) -> dict:
    stacks = load(paths)
    total = sum(c for _, _, c in stacks)
    cats: Counter[str] = Counter()
    waits: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for frames, raw, count in stacks:
        wait = waiting(raw[-1])
        if wait:
            waits[wait] += count
            continue
        cats[categorise(frames)] += count
        leaves[raw[-1].strip()] += count
    busy = total - sum(waits.values())
    return {
        "files": [str(p) for p in paths],
        "samples": total,
        "busy_samples": busy,
        "waits": [(k, v, v / total if total else 0.0) for k, v in waits.most_common()],
        "categories": [(k, v, v / busy if busy else 0.0) for k, v in cats.most_common()],
        "leaves": [(k, v, v / busy if busy else 0.0) for k, v in leaves.most_common(top)],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("profiles", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=15, help="leaf frames to list (default 15)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    s = summarise(args.profiles, args.top)
    if args.json:
        json.dump(s, sys.stdout, indent=2)
        print()
        return 0
    print(f"{', '.join(s['files'])}: {s['samples']} samples, {s['busy_samples']} busy")
    print("\nwaiting (% of all samples)")
    for k, v, f in s["waits"]:
        print(f"  {k:<40} {v:>7} {f:>6.1%}")
    print("\ncategory (% of busy samples)              samples      %")
    for k, v, f in s["categories"]:
        print(f"  {k:<40} {v:>7} {f:>6.1%}")
    print(f"\ntop {args.top} leaf frames")
    for k, v, f in s["leaves"]:
        print(f"  {f:>6.1%} {v:>6}  {k[:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
