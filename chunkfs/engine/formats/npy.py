"""Boundary of a NumPy ``.npy`` file.

Layout: ``\\x93NUMPY``, a major and minor version byte, the header length (u16
in version 1.0, u32 in 2.0 and 3.0), a Python-literal header padded with spaces
and ending in a newline so that the data starts aligned (to 64 bytes in current
NumPy, 16 in old releases), then the array's bytes up to the end of the file.
The one boundary that matters is the data start: the header changes with the
shape, the data is cut at fixed sizes from where it begins. The header length is
known from the first 12 bytes, so the parser only reads the header to check it.
"""

from __future__ import annotations

from chunkfs.engine.formats.base import INFINITE, MAX_LOOKAHEAD, BoundaryParser

MAGIC = b"\x93NUMPY"
PREFIX = {1: 10, 2: 12, 3: 12}
"""Bytes before the header text, by major version (the header length field is u16 in 1.0, u32 after)."""
ALIGN = 16
"""Every NumPy version pads the data start to a multiple of this (newer ones to 64)."""


class NpyParser(BoundaryParser):
    """Reads the fixed prefix and checks the header text; reports the data start."""

    name = "npy"

    def __init__(self) -> None:
        super().__init__()
        self.regions: list[tuple[str, int, int]] = []
        """One region, ``("array", data start, INFINITE)``: the data runs to the end of the file."""
        self.watermark = 0
        self.needed_from = 0

    @classmethod
    def matches(cls, head: bytes) -> bool:
        return head.startswith(MAGIC)

    def feed(self, view: memoryview, start: int, eof: bool) -> None:
        self._feed(view[-start:], eof)  # the view starts at or before offset 0 (needed_from)

    def _feed(self, data: memoryview, eof: bool) -> None:
        if len(data) < 8:
            self._wait(eof, "truncated version")
            return
        major, minor = data[6], data[7]
        prefix = PREFIX.get(major)
        if prefix is None or minor != 0:
            self.give_up(f"unknown npy version {major}.{minor}")
            return
        if len(data) < prefix:
            self._wait(eof, "truncated header length")
            return
        data_start = prefix + int.from_bytes(data[8:prefix], "little")
        if data_start % ALIGN or data_start > MAX_LOOKAHEAD:
            self.give_up(f"implausible data start {data_start}")
            return
        self.watermark = data_start
        if len(data) < data_start:
            self._wait(eof, "truncated header")
        elif data[prefix : prefix + 1] != b"{" or data[data_start - 1 : data_start] != b"\n":
            self.give_up("header is not a dict literal ending in a newline")
        else:
            self.boundaries.append(data_start)
            self.regions.append(("array", data_start, INFINITE))
            self.watermark = self.needed_from = INFINITE

    def _wait(self, eof: bool, reason: str) -> None:
        """Wait for more bytes, or give up when there will be none."""
        if eof:
            self.give_up(reason)
