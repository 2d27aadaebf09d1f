"""Format detection: pick a boundary parser from a file's first bytes.

Each parser lives in its own module and knows one on-disk format; see
``base.py`` for the contract they share with the chunker.
"""

from __future__ import annotations

from chunkfs.engine.formats.base import BoundaryParser, FixedParser
from chunkfs.engine.formats.gguf import GgufParser
from chunkfs.engine.formats.npy import NpyParser
from chunkfs.engine.formats.safetensors import SafetensorsParser
from chunkfs.engine.formats.torchzip import TorchZipParser

PARSERS: tuple[type[BoundaryParser], ...] = (
    SafetensorsParser,
    TorchZipParser,
    GgufParser,
    NpyParser,
)


def detect(head: bytes) -> BoundaryParser:
    """Return a fresh parser for the format whose signature ``head`` starts with.

    ``head`` is the first 16 bytes of the file (fewer if the file is shorter).
    Unknown formats get ``FixedParser``: fixed-size chunks from offset 0.
    """
    for parser in PARSERS:
        if parser.matches(head):
            return parser()
    return FixedParser()
