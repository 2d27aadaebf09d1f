"""Which tensors a file holds, and where: the format parsers' regions, for any content.

``chunkfs diff`` uses this to say *which tensors* changed between two versions
of a checkpoint, and by how many bytes. The same parsers that place chunk
boundaries name the regions (tensor names for safetensors and GGUF, entry names
for PyTorch zips), so this costs no second parser per format.
"""

from __future__ import annotations

from collections.abc import Callable

from chunkfs.engine.chunker import DETECT_BYTES
from chunkfs.engine.formats import detect
from chunkfs.engine.formats.base import INFINITE

BLOCK = 8 << 20

Reader = Callable[[int, int], bytes]
"""read(offset, size) -> bytes of a file's content."""


def regions(read: Reader, size: int) -> tuple[str, list[tuple[str, int, int]]]:
    """(format name, [(region name, start, end)]) of a file; ends clipped to ``size``.

    Bytes are read only as far as the parser needs them (a safetensors header,
    the whole of a zip).
    """
    parser = detect(read(0, DETECT_BYTES))
    buf = bytearray()
    base = 0
    offset = 0
    while parser.needed_from < INFINITE and offset < size:
        block = read(offset, BLOCK)
        if not block:
            break
        offset += len(block)
        keep = min(parser.needed_from, offset) - base
        if keep > 0:
            del buf[:keep]
            base += keep
        buf += block
        parser.feed(memoryview(buf), base, offset >= size)
    if parser.needed_from < INFINITE:
        parser.feed(memoryview(buf), base, True)
    found = getattr(parser, "regions", [])
    return parser.name, [(name, start, min(end, size)) for name, start, end in found if start < size]


def count_differing(a: bytes, b: bytes) -> int:
    """How many byte positions differ between two equally long byte strings."""
    if a == b:
        return 0
    x = int.from_bytes(a, "little") ^ int.from_bytes(b, "little")
    return len(a) - x.to_bytes(len(a), "little").count(0)
