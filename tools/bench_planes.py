#!/usr/bin/env python3
"""The byte-plane transform, native (native/planes.c) against NumPy, and what it changes for
a read of a cold float chunk.

Byte planes (engine/codec.py) split each 2- or 4-byte element's bytes into planes before
zstd on the cold tier, and join them back on every read of such a chunk. Measured in this
process's CPU time (``time.thread_time``: less sensitive to other load than wall time), on
bf16 random-normal weights, medians of ``--repeat``:

* the transform alone, both ways, widths 2 and 4, on one 4 MiB chunk (what a read decodes)
  and on 64 MiB (beyond the caches);
* ``codec.decode`` of a cold chunk (zstd, planes back, BLAKE3 check), with either transform;
* the XOR of delta chunks (``codec.xor``: NumPy) on 4 and 64 MiB, and ``codec.decode`` of a
  4 MiB bf16 chunk stored as a delta of its neighbour (the same weights after small optimizer
  steps; the base's bytes in memory, as the chunk cache holds them) against the same chunk
  stored whole.

    python tools/bench_planes.py [--json] [--repeat 9]

Figures and verdict: docs/performance.md, "Byte planes".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial

import benchlib as bl
import numpy as np

from chunkfs.engine import codec
from chunkfs.types import Compression, chunk_flags

MiB = 1 << 20


def _gb_s(fn, nbytes: int, repeat: int) -> float:
    """GB/s of ``fn()`` over ``nbytes``, CPU time, median of ``repeat`` (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return nbytes / max(bl.median(times), 1e-9) / 1e9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=9)
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = p.parse_args()
    if codec._planes is None:
        print("chunkfs._planes is not built (no C compiler at install?): nothing to compare", file=sys.stderr)
        return 2
    native = codec._planes
    rng = np.random.default_rng(0)
    rows, out = [], {"code": bl.code_version(), "transform": [], "decode": []}
    for size in (4 * MiB, 64 * MiB):
        data = bl.bf16_normal(rng, size // 2).tobytes()
        for width in (2, 4):
            planes = codec.numpy_to_planes(data, width)
            row = {
                "size_mib": size // MiB, "width": width,
                "numpy_to": _gb_s(partial(codec.numpy_to_planes, data, width), size, args.repeat),
                "native_to": _gb_s(partial(native.to_planes, data, width), size, args.repeat),
                "numpy_from": _gb_s(partial(codec.numpy_from_planes, planes, width), size, args.repeat),
                "native_from": _gb_s(partial(native.from_planes, planes, width), size, args.repeat),
            }  # fmt: skip
            out["transform"].append(row)
            rows.append([f"{size // MiB} MiB, width {width}", f"{row['numpy_to']:.2f}", f"{row['native_to']:.2f}",
                         f"{row['native_to'] / row['numpy_to']:.1f}×", f"{row['numpy_from']:.2f}",
                         f"{row['native_from']:.2f}", f"{row['native_from'] / row['numpy_from']:.1f}×"])  # fmt: skip
    bl.print_table(
        "byte planes, GB/s a core (CPU time)",
        ["data", "numpy to", "native to", "", "numpy from", "native from", ""],
        rows,
        note="bf16 random-normal weights",
    )
    chunk = bl.bf16_normal(rng, 2 * MiB).tobytes()  # one 4 MiB chunk
    cid = codec.chunk_id(chunk)
    decode_rows = []
    for how in (Compression.ZSTD_PLANES2, Compression.ZSTD_PLANES4):
        stored, flags = codec.compress(chunk, how, 9), chunk_flags(how)
        figures = {}
        for name, impl in (("numpy", None), ("native", native)):
            codec._planes = impl
            read = partial(codec.decode, cid, stored, len(chunk), flags, "bench")
            figures[name] = _gb_s(read, len(chunk), args.repeat)
        codec._planes = native
        out["decode"].append({"encoding": how.name, **figures})
        decode_rows.append([how.name, f"{figures['numpy']:.2f}", f"{figures['native']:.2f}",
                            f"{figures['native'] / figures['numpy']:.2f}×"])  # fmt: skip
    bl.print_table(
        "reading a cold chunk (codec.decode: zstd, planes back, BLAKE3), GB/s a core",
        ["encoding", "with numpy planes", "with native planes", ""],
        decode_rows,
        note="one 4 MiB bf16 chunk, zstd level 9",
    )
    xor_rows, out["xor"] = [], []
    for size in (4 * MiB, 64 * MiB):
        a, b = rng.bytes(size), rng.bytes(size)
        gb_s = _gb_s(partial(codec.xor, a, b), size, args.repeat)
        out["xor"].append({"size_mib": size // MiB, "gb_s": gb_s})
        xor_rows.append([f"XOR, {size // MiB} MiB", f"{gb_s:.2f}", ""])
    weights = rng.standard_normal(2 * MiB).astype(np.float32) * 0.02
    later = weights + rng.standard_normal(2 * MiB).astype(np.float32) * 2e-4
    older, newer = (bl.bf16_of(w).tobytes() for w in (weights, later))
    cid, base = codec.chunk_id(older), codec.chunk_id(newer)
    whole = codec.compress(older, Compression.ZSTD_PLANES2, 3), chunk_flags(Compression.ZSTD_PLANES2)
    delta = codec.encode_delta(older, base, newer, 64 << 10)
    for name, (stored, flags) in (("whole", whole), ("delta", delta)):
        read = partial(codec.decode, cid, stored, len(older), flags, "bench", lambda c: newer)
        gb_s = _gb_s(read, len(older), args.repeat)
        out["decode"].append({"encoding": name, "stored": len(stored), "native": gb_s})
        xor_rows.append([f"decode, {name}", f"{gb_s:.2f}", f"{len(stored) / len(older):.3f}"])
    bl.print_table(
        "delta chunks, GB/s a core",
        ["", "GB/s", "stored / raw"],
        xor_rows,
        note="decode: one 4 MiB bf16 chunk, whole (byte planes + zstd 3) or as a delta of its neighbour (zstd 1)",
    )
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
