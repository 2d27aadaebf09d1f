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
entries can be followed. A tensor storage's size is known before its entry:
``data.pkl``, the archive's first entry, names each storage with its element type
and count (``storage_sizes``, read from the pickle's opcodes, never executed), so
the parser checks for the descriptor right where the storage ends and never looks
at (nor has the chunker keep) the bytes in between; a descriptor that is not there
is malformed input: the parser gives up (fixed-size chunks from the last cut). For
any other entry, the data ends at the first descriptor signature whose sizes both
equal the distance from the data start, found with a zero-copy regex search of the
view that resumes where the previous feed stopped.
"""

from __future__ import annotations

import pickletools
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
PICKLE_KEEP = 16 << 20
"""The largest ``data.pkl`` kept whole to read storage sizes from (a state dict with ~100k tensors)."""
ELEMENT_SIZE = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
    "ComplexDoubleStorage": 16, "ComplexFloatStorage": 8, "UntypedStorage": 1,
}  # fmt: skip
"""Bytes per element of the storage types ``torch.save`` names in ``data.pkl``; others get no hint."""
MARK_CONSUMERS = {"SETITEMS", "APPENDS", "DICT", "LIST", "FROZENSET", "ADDITEMS", "OBJ", "INST", "POP_MARK"}


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
        self._entry: tuple[str, int, tuple[int, ...], int | None] | None = None
        """The entry being read: name, data start, descriptor lengths, data size if data.pkl gave it."""
        self._sizes: dict[str, int] = {}  # entry name → data size, from this archive's data.pkl
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
            self._entry = (name, data_start, (24,) if zip64 is not None else (16, 24), self._sizes.get(name))
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
        """Find the current entry's data descriptor; False while waiting or on failure."""
        assert self._entry is not None
        name, data_start, forms, size = self._entry
        if size is not None:
            return self._descriptor_at(view, start, eof, data_start + size)
        end = start + len(view)
        lo = self._scan - start
        while (hit := DESCRIPTOR.search(view, lo)) is not None:
            lo = hit.start()
            length = _descriptor_size(view, lo, start + lo - data_start, forms, eof)
            if length is None:  # too few bytes yet to tell
                self._scan_from(start + lo, end)
                return False
            if length:
                if name.endswith("data.pkl"):  # a new archive: its storages' sizes
                    pkl = data_start >= start and bytes(view[data_start - start : lo])
                    self._sizes = storage_sizes(pkl, name[: -len("data.pkl")]) if pkl else {}
                self._entry_ends(start + lo, length)
                return True
            lo += 1
        if eof:
            self.give_up(f"no data descriptor for entry {name!r}")
            return False
        # keep the last 3 bytes: a signature may straddle this feed and the next
        self._scan_from(max(self._scan, end - 3), end)
        return False

    def _scan_from(self, at: int, end: int) -> None:
        """The search resumes at ``at``; a ``data.pkl`` is kept whole (while it is small enough) to
        read the storage sizes from, other bytes before ``at`` are needed no more."""
        assert self._entry is not None
        name, data_start = self._entry[:2]
        self._scan = self.watermark = at
        keep = name.endswith("data.pkl") and end - data_start <= PICKLE_KEEP
        self.needed_from = data_start if keep else at

    def _descriptor_at(self, view: memoryview, start: int, eof: bool, at: int) -> bool:
        """The descriptor of an entry whose size data.pkl gave: at ``at`` exactly, or malformed input."""
        assert self._entry is not None
        name, data_start, forms, _ = self._entry
        length = _descriptor_size(view, at - start, at - data_start, forms, eof) if start <= at else None
        if length is None and not eof:  # not there yet: nothing before it is needed
            self._scan = self.watermark = self.needed_from = at
            return False
        if not length:
            self.give_up(f"entry {name!r}: no data descriptor where data.pkl says its {at - data_start} bytes end")
            return False
        self._entry_ends(at, length)
        return True

    def _entry_ends(self, at: int, length: int) -> None:
        """The current entry's data ends at ``at``; a descriptor of ``length`` bytes follows."""
        assert self._entry is not None
        name, data_start = self._entry[:2]
        self._cut(at)
        self.regions.append((name, data_start, at))
        self._entry = None
        self._pos = self.watermark = self.needed_from = at + length

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


def storage_sizes(pkl: bytes, prefix: str) -> dict[str, int]:
    """``{"<prefix>data/<key>": bytes}`` for each storage ``data.pkl`` names, read from the
    pickle's opcodes (never executed): a persistent id ``('storage', torch.<Type>Storage, key,
    location, element count)``. Anything unexpected yields no entry (its data is searched)."""
    sizes: dict[str, int] = {}
    memo: dict[int, object] = {}
    frames: list[list] = [[]]  # the values since each open MARK
    last: object = None
    try:
        for op, arg, _pos in pickletools.genops(pkl):
            name = op.name
            if name == "MARK":
                frames.append([])
                continue
            if name in ("BINPUT", "LONG_BINPUT"):
                memo[arg] = last
                continue
            if name == "MEMOIZE":
                memo[len(memo)] = last
                continue
            if name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "BININT", "BININT1", "BININT2",
                        "LONG1", "INT", "LONG"):  # fmt: skip
                last = arg
            elif name == "GLOBAL":
                last = tuple(arg.split(" ", 1))
            elif name == "STACK_GLOBAL" and len(frames[-1]) >= 2:
                last = (frames[-1].pop(-2), frames[-1].pop())
            elif name in ("BINGET", "LONG_BINGET"):
                last = memo.get(arg)
            elif name == "TUPLE" and len(frames) > 1:
                last = tuple(frames.pop())
            elif name in MARK_CONSUMERS and len(frames) > 1:
                frames.pop()
                last = None
            elif name == "BINPERSID":
                _storage_size(last, prefix, sizes)
                last = None
                continue
            else:  # anything else: its value is of no interest, but it stands in the frame
                last = None
                if name == "STOP":
                    break
            frames[-1].append(last)
    except (ValueError, TypeError, IndexError, KeyError):  # not a pickle we can follow: no hints
        return {}
    return sizes


def _storage_size(pid: object, prefix: str, sizes: dict[str, int]) -> None:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
        return
    _, kind, key, _location, count = pid
    if isinstance(kind, tuple) and len(kind) == 2 and kind[0] == "torch" and isinstance(key, str) \
            and isinstance(count, int) and count >= 0 and kind[1] in ELEMENT_SIZE:
        sizes[f"{prefix}data/{key}"] = count * ELEMENT_SIZE[kind[1]]


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
