"""Incremental saves: an unchanged tensor is not serialized, hashed chunk by chunk or stored again.

DCP writes each tensor of a rank as one ``torch.save`` archive, back to back in the rank's
file. For a tensor whose bytes did not change since this process last saved it, that costs
torch's pickling and CRC-32 of every byte, the chunker's BLAKE3 of every chunk and the
dedup lookups — only to find that every chunk is stored already. ``save_tensor`` instead
hashes the tensor's memory once (BLAKE3) and, when the digest, dtype, shape and strides
are those of the previous save of the same item, writes the archive as it was: the bytes
``torch.save`` wrote before and after the tensor's data (kept from that save: about a
kilobyte), and between them the tensor's chunks by id (``FileContent.splice``). The
result is byte for byte what ``torch.save`` would write: the archive depends only on the
tensor's metadata and bytes, and its CRC is of those same bytes.

The decision is by the bytes alone, never by torch's ``_version`` counter or the storage
pointer: a write through a numpy view or a ``.data`` swap changes a tensor without
bumping the counter. Whatever does not fit — a tensor never saved by this process, a
changed one, chunks gc has taken since, a file whose cuts do not line up — goes the full
way (``torch.save``), and that save is remembered for the next one. What is remembered
(``Remembered``) is per process and per (repository, file name, item): a training process
saving step after step into one repository.

``save_bytes`` is the same rule for bytes with no archive of their own around them: the
tensors of a safetensors file (``save_file``) and the storages ``torch.save`` writes for
``save`` (single.py).
"""

from __future__ import annotations

import bisect
import collections
import ctypes
import threading
from dataclasses import dataclass, field
from itertools import accumulate

import blake3
import numpy as np
import torch

from chunkfs.torch.files import WriteStream
from chunkfs.types import Extent


@dataclass
class Remembered:
    """How one item was written last time: enough to write it again without ``torch.save``."""

    digest: bytes  # BLAKE3 of the tensor's bytes
    layout: tuple  # dtype, shape, strides, storage offset, bytes
    head: bytes  # what torch.save wrote before the tensor's bytes
    tail: bytes  # ... and after them
    data_offset: int = 0  # where the tensor's bytes started in the file (until the file is committed)
    chunks: list[Extent] = field(default_factory=list)  # the whole chunks of the tensor's bytes


REMEMBERED_MAX = 100_000
"""Items remembered at most, the least recently saved forgotten first: a process that names its
files by step (``model-step100.safetensors``) never saves one name twice, and what it
remembered must not grow with the length of the run."""

_remembered: collections.OrderedDict[tuple, Remembered] = collections.OrderedDict()
_lock = threading.Lock()


def storage_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of the tensor's storage — what ``torch.save`` writes — without a copy."""
    storage = tensor.untyped_storage()
    n = storage.nbytes()
    if n == 0:
        return memoryview(b"")
    return memoryview((ctypes.c_ubyte * n).from_address(storage.data_ptr())).cast("B")


def _plain(tensor: torch.Tensor) -> bool:
    """A plain dense tensor, whose archive is a function of its bytes and ``_layout`` alone. A
    subclass (quantized, float8 with a scale, …) or a tensor with attributes or lazy
    conjugation pickles more than that: it always goes the full way."""
    return (type(tensor) is torch.Tensor and tensor.layout == torch.strided and not tensor.is_quantized
            and not tensor.__dict__ and not tensor.is_conj() and not tensor.is_neg()
            and not tensor.requires_grad)  # fmt: skip


def _layout(tensor: torch.Tensor) -> tuple:
    return (tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()), tensor.storage_offset(),
            tensor.untyped_storage().nbytes())  # fmt: skip


class _Recorder:
    """The stream ``torch.save`` writes into: passes every write on, and keeps the bytes written
    before and after the one write that is the tensor's storage itself."""

    def __init__(self, stream: WriteStream, data: memoryview) -> None:
        self.stream = stream
        self._data = data
        self.head: list[bytes] = []
        self.tail: list[bytes] = []
        self.data_offset: int | None = None
        self.ambiguous = False

    def write(self, b) -> int:
        view = memoryview(b)
        is_data = view.nbytes == self._data.nbytes and _address(view) == _address(self._data)
        if is_data:
            self.ambiguous |= self.data_offset is not None
            self.data_offset = self.stream.tell()
        elif self.data_offset is None:
            self.head.append(bytes(view))
        else:
            self.tail.append(bytes(view))
        return self.stream.write(b)

    def flush(self) -> None:
        pass

    def tell(self) -> int:
        return self.stream.tell()


def _address(view: memoryview) -> int:
    """Where a buffer's bytes are in memory (read-only ones too: torch hands those over)."""
    return np.frombuffer(view, dtype=np.uint8).ctypes.data if view.nbytes else 0


def save_tensor(stream: WriteStream, key: tuple, tensor: torch.Tensor) -> None:
    """``torch.save(tensor, stream)``, or the same bytes spliced from this process's last save of
    ``key`` when the tensor's bytes and layout are unchanged (module docstring)."""
    data = storage_bytes(tensor)
    if data.nbytes < stream.chunk_size or not _plain(tensor):  # no whole chunk to splice, or more than bytes
        torch.save(tensor, stream)
        return
    digest = blake3.blake3(data).digest()
    layout = _layout(tensor)
    last = _unchanged(key, digest, layout)
    if last is not None:
        stream.write(last.head)
        remembered = Remembered(digest, layout, last.head, last.tail, stream.tell())
        spliced = _splice_or_write(stream, data, last.chunks)
        stream.write(last.tail)
        if spliced:
            return
    else:
        recorder = _Recorder(stream, data)
        torch.save(tensor, recorder)
        if recorder.data_offset is None or recorder.ambiguous:
            return  # torch wrote the storage in pieces or copied it: nothing to splice next time
        remembered = Remembered(digest, layout, b"".join(recorder.head), b"".join(recorder.tail), recorder.data_offset)
    _remember_on_commit(stream, key, remembered, data.nbytes)


def save_bytes(stream: WriteStream, key: tuple, data: memoryview) -> None:
    """Write a tensor's raw bytes (a safetensors file's data: no archive around them), spliced
    from this process's last save of ``key`` when they hash the same."""
    if data.nbytes < stream.chunk_size:
        stream.write(data)
        return
    digest = blake3.blake3(data).digest()
    last = _unchanged(key, digest, ())
    remembered = Remembered(digest, (), b"", b"", stream.tell())
    if last is None:
        stream.write(data)
    elif _splice_or_write(stream, data, last.chunks):
        return
    _remember_on_commit(stream, key, remembered, data.nbytes)


def _unchanged(key: tuple, digest: bytes, layout: tuple) -> Remembered | None:
    """This process's last save of ``key``, if it had these bytes and this layout and its chunks are known."""
    with _lock:
        last = _remembered.get(key)
        if last is not None:
            _remembered.move_to_end(key)  # used again: the last to forget
    return last if last is not None and last.digest == digest and last.layout == layout and last.chunks else None


def _splice_or_write(stream: WriteStream, data: memoryview, chunks: list[Extent]) -> bool:
    """Write ``data`` as its remembered whole ``chunks`` and the bytes after them; True if spliced."""
    whole = sum(e.length for e in chunks)
    if stream.splice(data[:whole], chunks):
        stream.write(data[whole:])
        return True
    stream.write(data)  # the cuts do not line up here, or gc took a chunk: the bytes themselves
    return False


def _remember_on_commit(stream: WriteStream, key: tuple, remembered: Remembered, nbytes: int) -> None:
    chunk_size = stream.chunk_size
    stream.on_commit(lambda extents: _remember(key, remembered, nbytes, extents, chunk_size))


def _remember(key: tuple, remembered: Remembered, nbytes: int, extents: list[Extent], chunk_size: int) -> None:
    """Once the file is committed: keep the whole chunks the tensor's bytes were cut into, if
    they start where its bytes start (they do wherever a tensor-aware parser cut the file)."""
    starts = list(accumulate((e.length for e in extents), initial=0))
    i = bisect.bisect_left(starts, remembered.data_offset)
    if i == len(starts) or starts[i] != remembered.data_offset:
        return
    chunks = extents[i : i + nbytes // chunk_size]
    if len(chunks) != nbytes // chunk_size or any(e.length != chunk_size for e in chunks):
        return
    remembered.chunks = chunks
    with _lock:
        _remembered[key] = remembered
        _remembered.move_to_end(key)
        while len(_remembered) > REMEMBERED_MAX:
            _remembered.popitem(last=False)


def forget_all() -> None:
    """Forget every remembered save (tests; a process that wants every tensor saved the full way)."""
    with _lock:
        _remembered.clear()
