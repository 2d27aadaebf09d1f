"""Boundaries of a safetensors file.

Layout: an 8-byte little-endian header length N, N bytes of JSON that map each
tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
relative to the end of the header), then the tensors' bytes. The header is its
own region (it changes whenever a shape or the metadata does), every tensor
starts a region, and the end of the last tensor closes one so that trailing
bytes never share a chunk with it. All of it is known once the header is read,
so the parser never looks past offset 8 + N.
"""

from __future__ import annotations

import itertools
import json

from chunkfs.engine.formats.base import INFINITE, MAX_LOOKAHEAD, BoundaryParser

MAX_HEADER = 100_000_000
"""The largest header the safetensors library itself accepts: longer claims are not safetensors."""


class SafetensorsParser(BoundaryParser):
    """Reads the JSON header once it is complete and reports every boundary at once."""

    name = "safetensors"

    def __init__(self) -> None:
        super().__init__()
        self.regions: list[tuple[str, int, int]] = []
        self.watermark = 0
        self.needed_from = 0

    @classmethod
    def matches(cls, head: bytes) -> bool:
        n = int.from_bytes(head[:8], "little")
        return len(head) >= 9 and 2 <= n <= MAX_HEADER and head[8:9] == b"{"

    def feed(self, view: memoryview, start: int, eof: bool) -> None:
        self._feed(view[-start:], eof)  # the view starts at or before offset 0 (needed_from)

    def _feed(self, data: memoryview, eof: bool) -> None:
        if len(data) < 8:
            self._wait(eof, "truncated header length")
            return
        header_end = 8 + int.from_bytes(data[:8], "little")
        if header_end > MAX_LOOKAHEAD:
            self.give_up(f"header ending at {header_end} exceeds the lookahead limit")
            return
        self.watermark = header_end  # no tensor starts inside the header
        if len(data) < header_end:
            self._wait(eof, "truncated header")
        else:
            self._parse(bytes(data[8:header_end]), header_end)

    def _wait(self, eof: bool, reason: str) -> None:
        """Wait for more bytes, or give up when there will be none."""
        if eof:
            self.give_up(reason)

    def _parse(self, text: bytes, base: int) -> None:
        try:
            header = json.loads(text)
        except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, absurd nesting
            self.give_up(f"header is not JSON: {exc.__class__.__name__}")
            return
        # matches() saw the "{": a header that parses is an object
        spans = []
        for name, info in header.items():
            if name == "__metadata__":
                continue
            offsets = info.get("data_offsets") if isinstance(info, dict) else None
            if not (
                isinstance(offsets, list)
                and len(offsets) == 2
                and all(type(x) is int for x in offsets)  # bool is an int subclass: reject it
                and 0 <= offsets[0] <= offsets[1] < INFINITE - base
            ):
                self.give_up(f"bad data_offsets for tensor {name!r}")
                return
            spans.append((offsets[0], offsets[1], name))
        spans.sort()
        for (_, prev_end, prev), (begin, _, name) in itertools.pairwise(spans):
            if begin < prev_end:
                self.give_up(f"tensors {prev!r} and {name!r} overlap")
                return
        self.regions = [(name, base + b, base + e) for b, e, name in spans]
        cuts = {base} | {base + b for b, _, _ in spans} | {base + max((e for _, e, _ in spans), default=0)}
        self.boundaries.extend(sorted(cuts))
        self.watermark = self.needed_from = INFINITE
