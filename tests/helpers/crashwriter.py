"""The writer of tests/fuse/test_failures.py's crash test: run as ``python crashwriter.py DIR FIRST``.

A separate process, as a trainer is: atomic saves of ``DIR/ckpt-I.bin`` for I = FIRST, FIRST+1, …
(write ``.ckpt-I.tmp`` in pieces, fsync, rename, fsync the directory), printing each name once it
is durable, until it is killed. ``checkpoint_bytes(i)`` is what save I holds.
"""

from __future__ import annotations

import os
import random
import sys

MiB = 1 << 20


def checkpoint_bytes(i: int) -> bytes:
    """The content of checkpoint i: 3-8 MiB, a shared part (dedup) and a part of its own."""
    rng = random.Random(i)
    return random.Random(-1).randbytes(2 * MiB) + rng.randbytes(MiB + rng.randrange(5 * MiB))


def save_forever(out: str, first: int) -> None:
    for i in range(first, 10**6):
        tmp, final = os.path.join(out, f".ckpt-{i}.tmp"), os.path.join(out, f"ckpt-{i}.bin")
        with open(tmp, "wb") as f:
            data = checkpoint_bytes(i)
            f.writelines(data[lo : lo + MiB] for lo in range(0, len(data), MiB))  # in pieces, like torch.save
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, final)
        dfd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
        print(f"ckpt-{i}.bin", flush=True)


if __name__ == "__main__":
    save_forever(sys.argv[1], int(sys.argv[2]))
