"""Boundaries of a zip archive as ``torch.save`` writes it.

``torch.save`` streams a zip: for each record (``<archive>/data.pkl``, small
metadata records, one ``<archive>/data/<n>`` per tensor storage) a local file
header (30 fixed bytes, the name, an extra field that pads the data to 64 bytes),
the stored (uncompressed) bytes, and — because the sizes are unknown when the
header is written — general-purpose flag bit 3 with zero sizes in the header and
a data descriptor after the data: ``PK\\x07\\x08``, CRC-32, compressed and
uncompressed size as u32 (16 bytes), or as u64 (24 bytes) when the local header
carries a zip64 extra field (miniz, torch's zip writer, adds one to entries of
4 GiB or more or that start past 4 GiB). Then the central directory: one
boundary at its start, and the rest is cut at fixed sizes.

Archives may follow one another: ``torch.distributed.checkpoint`` writes each
tensor (and each other object) of a rank as one ``torch.save`` archive, back to
back in one ``.distcp`` file. The central directory is walked record by record
to the end record, and a local header right after it starts the next archive.

Boundaries: each local header start, each entry's data start and each data end
(the descriptor start), and each central directory start. So an entry's data is a run of chunks of its own, the
same chunks as the same tensor gives in any other file. The descriptor, whose
CRC changes with the data, lands in a small piece together with the next local
header, which stays the same from save to save as long as the shapes do.

Where the sizes are in the local header (bit 3 clear, e.g. Python's zipfile on
a seekable file) they are used, whatever the compression. Otherwise only stored
entries can be followed: the data ends at the first descriptor signature whose
sizes both equal the distance from the data start, found with a zero-copy regex
search of the view that resumes where the previous feed stopped.
"""

from __future__ import annotations

import re
import struct

from chunkfs.engine.formats.base import INFINITE, BoundaryParser

LOCAL = b"PK\x03\x04"
CENTRAL, END, END64, LOCATOR64 = b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
TRAILERS = (CENTRAL, END, END64)
"""Central directory, end of central directory, zip64 end record: where the entries stop."""
FIXED = struct.Struct("<4sHHHHHIIIHH")
"""Local header: signature, version, flags, method, time, date, crc, csize, usize, name len, extra len."""
DESCRIPTOR = re.compile(re.escape(b"PK\x07\x08"))
ZIP64_EXTRA = 0x0001
FLAG_DESCRIPTOR = 0x0008
STORED = 0
U32_MAX = 0xFFFFFFFF


class TorchZipParser(BoundaryParser):
    """Follows the local headers entry by entry, resuming each feed where the last one stopped."""

    name = "torchzip"

    def __init__(self) -> None:
        super().__init__()
        self.regions: list[tuple[str, int, int]] = []
        """(entry name, data start, data end) for every entry, descriptor excluded."""
        self.watermark = 0
        self.needed_from = 0
        self._pos = 0  # the next local header, while not inside an entry
        self._entry: tuple[str, int, tuple[int, ...]] | None = None  # name, data start, descriptor lengths
        self._scan = 0  # where the descriptor search resumes
        self._trailer = False  # walking a central directory (``_pos``: its next record)
        self._ended = False  # an archive's end record was passed: another may follow at ``_pos``

    @classmethod
    def matches(cls, head: bytes) -> bool:
        return head.startswith(LOCAL)

    def feed(self, view: memoryview, start: int, eof: bool) -> None:
        while self.needed_from < INFINITE:
            if self._trailer:
                step = self._directory
            else:
                step = self._header if self._entry is None else self._descriptor
            if not step(view, start, eof):
                break

    def _header(self, view: memoryview, start: int, eof: bool) -> bool:
        """Read the local header at ``_pos``; False while waiting or once done."""
        pos, end = self._pos, start + len(view)
        if end - pos < 4:
            if self._ended and eof:  # the file ends with a whole archive
                self.watermark = self.needed_from = INFINITE
                return False
            return self._wait(eof, "archive ends without a central directory")
        lo = pos - start
        if view[lo : lo + 4] != LOCAL:
            if self._ended:  # something else follows the archive: fixed-size chunks from here
                self.watermark = self.needed_from = INFINITE
                self._cut(pos)
                return False
            self._cut(pos)
            if view[lo : lo + 4] in TRAILERS:
                self._trailer = True
                return True
            self.give_up(f"no local file header at offset {pos}")
            return False
        self._ended = False
        if end - pos < FIXED.size:
            return self._wait(eof, "truncated local header")
        _, _, flags, method, _, _, _, csize, usize, name_len, extra_len = FIXED.unpack_from(view, lo)
        data_start = pos + FIXED.size + name_len + extra_len
        if end < data_start:
            return self._wait(eof, "truncated local header")
        name = bytes(view[lo + FIXED.size : lo + FIXED.size + name_len]).decode("utf-8", "replace")
        zip64 = _zip64_extra(bytes(view[data_start - start - extra_len : data_start - start]))
        self._cut(pos)
        self._cut(data_start)
        if flags & FLAG_DESCRIPTOR:
            if method != STORED:
                self.give_up(f"entry {name!r} is compressed and its size is only given after the data")
                return False
            self._entry = (name, data_start, (24,) if zip64 is not None else (16, 24))
            self._scan = self.watermark = self.needed_from = data_start
            return True
        if U32_MAX in (csize, usize):
            if zip64 is None or len(zip64) < 16:
                self.give_up(f"entry {name!r} has zip64 sizes but no zip64 extra field")
                return False
            _, csize = struct.unpack_from("<QQ", zip64)  # the local zip64 field holds both sizes
        self.regions.append((name, data_start, data_start + csize))
        self._pos = self.watermark = self.needed_from = data_start + csize
        return True

    def _descriptor(self, view: memoryview, start: int, eof: bool) -> bool:
        """Search for the current entry's data descriptor; False while waiting or on failure."""
        assert self._entry is not None
        name, data_start, forms = self._entry
        end = start + len(view)
        lo = self._scan - start
        while (hit := DESCRIPTOR.search(view, lo)) is not None:
            lo = hit.start()
            size = _descriptor_size(view, lo, start + lo - data_start, forms, eof)
            if size is None:  # too few bytes yet to tell
                self._scan = self.watermark = self.needed_from = start + lo
                return False
            if size:
                self._cut(start + lo)
                self.regions.append((name, data_start, start + lo))
                self._entry = None
                self._pos = self.watermark = self.needed_from = start + lo + size
                return True
            lo += 1
        if eof:
            self.give_up(f"no data descriptor for entry {name!r}")
            return False
        # keep the last 3 bytes: a signature may straddle this feed and the next
        self._scan = self.watermark = self.needed_from = max(self._scan, end - 3)
        return False

    def _directory(self, view: memoryview, start: int, eof: bool) -> bool:
        """Step over one record of the central directory at ``_pos``; past the end record, the
        next archive (if any) starts. False while waiting or once done.

        Every entry was found before the directory: a directory that does not parse only
        means that no further archive is looked for (fixed-size chunks from here)."""
        pos, end = self._pos, start + len(view)
        lo = pos - start
        sig = bytes(view[lo : lo + 4]) if end - pos >= 4 else b""
        need = {CENTRAL: 46, END64: 12, LOCATOR64: 20, END: 22}.get(sig, 4)
        if end - pos < need and not eof:
            return False
        if sig not in (CENTRAL, END64, LOCATOR64, END) or end - pos < need:
            self.watermark = self.needed_from = INFINITE
            return False
        if sig == CENTRAL:
            name_len, extra_len, comment_len = struct.unpack_from("<HHH", view, lo + 28)
            size = 46 + name_len + extra_len + comment_len
        elif sig == END64:
            size = 12 + struct.unpack_from("<Q", view, lo + 4)[0]
        elif sig == END:
            size = 22 + struct.unpack_from("<H", view, lo + 20)[0]
            self._trailer, self._ended = False, True
        else:
            size = need
        self._pos = self.watermark = self.needed_from = pos + size
        return True

    def _wait(self, eof: bool, reason: str) -> bool:
        """Wait for more bytes, or give up when there will be none."""
        if eof:
            self.give_up(reason)
        return False

    def _cut(self, offset: int) -> None:
        if offset > (self.boundaries[-1] if self.boundaries else 0):
            self.boundaries.append(offset)


def _zip64_extra(extra: bytes) -> bytes | None:
    """The body of the zip64 block of an extra field, or None without one."""
    i = 0
    while i + 4 <= len(extra):
        kind, size = struct.unpack_from("<HH", extra, i)
        if kind == ZIP64_EXTRA:
            return extra[i + 4 : i + 4 + size]
        i += 4 + size
    return None


def _descriptor_size(
    view: memoryview, lo: int, distance: int, forms: tuple[int, ...], eof: bool
) -> int | None:
    """Length of the descriptor at ``view[lo:]`` if its sizes equal ``distance``; 0 if not; None if
    the view ends too early to tell.

    ``forms`` lists the descriptor lengths to try: 24 (u64 sizes) alone when the
    local header had a zip64 extra field, else 16 (u32 sizes) and then 24 for a
    writer that switched to u64 sizes without announcing it.
    """
    for size in forms:
        if lo + size > len(view):
            if eof:
                continue  # the file ends before a descriptor of this form would
            return None
        csize, usize = struct.unpack_from("<II" if size == 16 else "<QQ", view, lo + 8)
        if csize == usize == distance:
            return size
    return 0
