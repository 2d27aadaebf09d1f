"""The contract between the streaming chunker and the format parsers.

A parser reads a file as it streams past (in order, as a writer writes it) and
reports *boundaries*: absolute file offsets where a new chunk must start, because
a tensor (or a header, or a zip entry) starts there. The chunker turns boundaries
into chunks: it cuts at each boundary, cuts big regions into fixed-size pieces
counted from the boundary that opened them, and merges runs of tiny regions (see
``chunkfs.engine.chunker``).

A parser never sees the whole file. It is handed the bytes the chunker still
buffers, as a ``memoryview`` plus the absolute offset of its first byte, and tells
the chunker three things through its attributes:

``boundaries``
    Offsets it found, strictly ascending, appended as it finds them. The chunker
    pops them from the left.
``watermark``
    Every boundary below this offset has been reported. The chunker may cut a
    chunk that ends at or before the watermark without waiting for more bytes.
    ``INFINITE`` once the parser knows every remaining boundary (or has given up).
``needed_from``
    The lowest offset whose bytes the parser still has to look at. The chunker
    keeps bytes from ``min(chunk start, needed_from)`` on, so a parser must move
    this forward as it goes; ``INFINITE`` once it needs nothing more.

Malformed or unsupported input is never an error here: the parser calls
``give_up()`` and the rest of the file is chunked at fixed sizes. A parser must
also give up rather than ask the chunker to buffer more than ``MAX_LOOKAHEAD``
bytes beyond ``needed_from`` — a header that claims to be 40 GB long must not
make the writer hold 40 GB in memory.
"""

from __future__ import annotations

INFINITE = 1 << 62
"""An offset larger than any file: 'no limit' for watermark and needed_from."""

MAX_LOOKAHEAD = 64 * 1024 * 1024
"""The most a parser may ask the chunker to buffer ahead of ``needed_from``."""


class BoundaryParser:
    """Base class: holds the three attributes and the give-up path.

    Subclasses implement ``feed``. The default state (no boundaries, watermark
    and needed_from at infinity) is exactly 'fixed-size chunks from offset 0',
    which is what ``FixedParser`` is.
    """

    name = "fixed"

    def __init__(self) -> None:
        self.boundaries: list[int] = []
        self.watermark: int = INFINITE
        self.needed_from: int = INFINITE
        self.gave_up: str | None = None

    def feed(self, view: memoryview, start: int, eof: bool) -> None:
        """Look at ``view`` (the file's bytes from offset ``start`` on).

        Called after every write the chunker receives, and once more with
        ``eof=True``. ``view`` always covers ``needed_from`` onward (when that is
        finite) up to everything received so far.
        """

    def give_up(self, reason: str) -> None:
        """Stop parsing: everything after the last reported boundary is fixed-size."""
        self.gave_up = reason
        self.watermark = INFINITE
        self.needed_from = INFINITE


class FixedParser(BoundaryParser):
    """Unknown formats: no boundaries at all, fixed-size chunks from offset 0."""
