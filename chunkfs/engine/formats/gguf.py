"""Boundaries of a GGUF file (llama.cpp's model format, versions 2 and 3).

Layout: ``GGUF``, version u32, tensor count u64, metadata count u64; the
metadata (key string, value type u32, value; strings are a u64 length and bytes,
arrays an element type u32, a count u64 and the elements, possibly arrays
themselves); one info per tensor (name string, dimension count u32, dimensions
u64 each, ggml type u32, offset u64 relative to the data section); padding up to
``general.alignment`` (32 by default); the data section. Every tensor's offset is
aligned, and nothing follows the data section.

Boundaries: the data start and each tensor start. Tensor sizes would need a
table of ggml type sizes whose numbering has changed between ggml versions, so
the parser does not use them: a tensor's region runs to the next tensor's start
(padding included) and the last one's to ``INFINITE``, the end of the file.

The header can be far larger than one write (vocabularies of 10^5 strings), so
it is parsed as it streams: ``_parse`` is a generator that asks for the next
field's bytes, to read or to skip, and ``feed`` answers from whatever the view
holds, resuming where it stopped. Every count is bounded; past a bound, or on any
inconsistency, the parser gives up.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Generator

from chunkfs.engine.formats.base import INFINITE, MAX_LOOKAHEAD, BoundaryParser

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_COUNT = 10_000_000
"""Most tensors, metadata entries or array elements believed: more is garbage, not a model."""
MAX_DEPTH = 8
"""Deepest nesting of arrays in arrays believed."""
MAX_DIMS = 16
"""Most dimensions believed for a tensor (ggml uses at most 4)."""
STRING, ARRAY, UINT32 = 8, 9, 4
SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
"""Byte size of each fixed-size metadata value type (u8 i8 u16 i16 u32 i32 f32 bool u64 i64 f64)."""
U32, U64 = struct.Struct("<I"), struct.Struct("<Q")

READ, SKIP = "read", "skip"
Request = tuple[str, int]
Steps = Generator[Request, bytes, None]
"""What ``_parse`` and its helpers are: they yield requests and are sent the bytes read (b"" for a skip)."""


class Malformed(Exception):
    """Raised inside ``_parse``; ``feed`` turns it into ``give_up``."""


class GgufParser(BoundaryParser):
    """Streams through the header, then reports the data start and every tensor start."""

    name = "gguf"

    def __init__(self) -> None:
        super().__init__()
        self.regions: list[tuple[str, int, int]] = []
        self.watermark = 0
        self.needed_from = 0
        self._pos = 0  # the next header byte not yet consumed
        self._steps = self._parse()
        self._want = next(self._steps)

    @classmethod
    def matches(cls, head: bytes) -> bool:
        return head.startswith(MAGIC)

    def feed(self, view: memoryview, start: int, eof: bool) -> None:
        end = start + len(view)
        kind, size = self._want
        try:
            while kind == SKIP or self._pos + size <= end:
                lo = self._pos - start
                self._pos += size
                kind, size = self._steps.send(b"" if kind == SKIP else bytes(view[lo : lo + size]))
        except StopIteration:
            return
        except Malformed as exc:
            self.give_up(str(exc))
            return
        self._want = kind, size
        if eof:
            self.give_up("truncated header")
        else:
            self.watermark = self.needed_from = self._pos  # every boundary lies past the header

    def _parse(self) -> Steps:
        _, version, n_tensors, n_kv = struct.unpack("<4sIQQ", (yield READ, 24))
        if version not in VERSIONS:
            raise Malformed(f"unsupported GGUF version {version}")
        alignment = DEFAULT_ALIGNMENT
        for _ in range(_bounded(n_kv, MAX_COUNT, "metadata count")):
            key = yield from _string()
            (kind,) = U32.unpack((yield READ, 4))
            if key == b"general.alignment":
                if kind != UINT32:
                    raise Malformed("general.alignment is not a u32")
                (alignment,) = U32.unpack((yield READ, 4))
                if alignment == 0 or alignment & (alignment - 1):
                    raise Malformed(f"alignment {alignment} is not a power of two")
            else:
                yield from _skip_value(kind, 0)
        tensors = []
        for _ in range(_bounded(n_tensors, MAX_COUNT, "tensor count")):
            name = (yield from _string()).decode("utf-8", "replace")
            (n_dims,) = U32.unpack((yield READ, 4))
            _bounded(n_dims, MAX_DIMS, "dimension count")
            dims = struct.unpack(f"<{n_dims}Q", (yield READ, 8 * n_dims))
            _, offset = struct.unpack("<IQ", (yield READ, 12))
            if offset % alignment:
                raise Malformed(f"tensor {name!r} is not aligned")
            tensors.append((offset, 0 not in dims, name))
        self._report(-(-self._pos // alignment) * alignment, tensors)

    def _report(self, data_start: int, tensors: list[tuple[int, bool, str]]) -> None:
        """Check the tensors' offsets and publish boundaries and regions."""
        tensors.sort()  # at one offset, empty tensors sort first: only the last may hold data
        for (offset, has_data, name), (next_offset, _, _) in itertools.pairwise(tensors):
            if offset == next_offset and has_data:
                raise Malformed(f"tensor {name!r} shares its offset with another")
        starts = [data_start + offset for offset, _, _ in tensors]
        ends = starts[1:] + [INFINITE]
        self.regions = [
            (name, begin, end if has_data else begin)
            for (_, has_data, name), begin, end in zip(tensors, starts, ends)
        ]
        self.boundaries.extend(sorted({data_start, *starts}))
        self.watermark = self.needed_from = INFINITE


def _bounded(count: int, limit: int, what: str) -> int:
    if count > limit:
        raise Malformed(f"{what} {count} exceeds {limit}")
    return count


def _string() -> Generator[Request, bytes, bytes]:
    (size,) = U64.unpack((yield READ, 8))
    return (yield READ, _bounded(size, MAX_LOOKAHEAD, "string length"))


def _skip_value(kind: int, depth: int) -> Steps:
    """Skip one metadata value of type ``kind``, reading only the lengths it needs."""
    if kind in SCALAR_SIZES:
        yield SKIP, SCALAR_SIZES[kind]
    elif kind == STRING:
        (size,) = U64.unpack((yield READ, 8))
        yield SKIP, _bounded(size, MAX_LOOKAHEAD, "string length")
    elif kind == ARRAY:
        _bounded(depth + 1, MAX_DEPTH, "array nesting")
        element, count = struct.unpack("<IQ", (yield READ, 12))
        _bounded(count, MAX_COUNT, "array length")
        if element in SCALAR_SIZES:
            yield SKIP, count * SCALAR_SIZES[element]
        elif element in (STRING, ARRAY):
            for _ in range(count):
                yield from _skip_value(element, depth + 1)
        else:
            raise Malformed(f"unknown metadata type {element}")
    else:
        raise Malformed(f"unknown metadata type {kind}")
