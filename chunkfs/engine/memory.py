"""The allocator settings of a process that moves chunks: the mount daemon, ``chunkfs import``.

Chunk buffers are MiB-sized; glibc's defaults serve each one with a fresh
``mmap`` and give freed memory back at once, so every chunk costs page faults
on first touch (~830k per GiB written through the mount, 700–815k per GiB
imported at 8 MiB chunks: docs/performance.md). Raising both thresholds lets
freed chunk buffers be reused.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def tame_malloc() -> None:
    """Keep glibc from mapping and unmapping every multi-MiB chunk buffer (no-op without glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, 64 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, 256 << 20)
