"""A safetensors file written as a stream: the header, then each tensor's bytes from its memory.

safetensors' own ``save`` builds the whole file in memory (a copy of every tensor) before it
is written; for a model of tens of GB that doubles the memory a save needs. ``layout``
computes the same header safetensors writes — tensors ordered by dtype, largest first as
safetensors ranks them, then by name; ``data_offsets`` back to back; the JSON padded with
spaces to a multiple of 8 — and the tensors' bytes then go to the stream one by one,
straight from their memory (the chunker cuts them without a copy). The checks are
safetensors' too: a non-contiguous tensor and tensors that share memory are refused. A
dtype this table does not know (safetensors learns new ones) returns None: the caller then
uses safetensors itself. tests/component/test_torch_files.py compares the bytes with
safetensors' own output.
"""

from __future__ import annotations

import itertools
import json
import struct

import torch

from chunkfs.torch.incremental import storage_bytes

_RANKED = ("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64",
           "F64", "I64", "U64")  # fmt: skip
"""safetensors' dtype order (0.4–0.8), lowest first: it writes the highest first."""

_NAMES = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.float8_e5m2: "F8_E5M2",
          torch.float8_e4m3fn: "F8_E4M3", torch.int16: "I16", torch.uint16: "U16", torch.float16: "F16",
          torch.bfloat16: "BF16", torch.int32: "I32", torch.uint32: "U32", torch.float32: "F32",
          torch.complex64: "C64", torch.float64: "F64", torch.int64: "I64", torch.uint64: "U64"}  # fmt: skip


def layout(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None
) -> tuple[bytes, list[tuple[str, memoryview]]] | None:
    """(the file's first bytes — length and header —, each tensor's name and bytes in file
    order), or None for what only safetensors itself can write."""
    if any(t.dtype not in _NAMES or t.layout != torch.strided or t.device.type != "cpu" for t in tensors.values()):
        return None
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        return None  # safetensors says what is wrong
    for name, t in tensors.items():
        if not t.is_contiguous():
            raise ValueError(f"You are trying to save a non contiguous tensor: `{name}` which is not allowed. Call "
                             "`.contiguous()` on it first (safetensors' rule).")  # fmt: skip
    _refuse_shared(tensors)
    order = sorted(tensors, key=lambda n: (-_RANKED.index(_NAMES[tensors[n].dtype]), n))
    header: dict = {"__metadata__": metadata} if metadata is not None else {}
    views, offset = [], 0
    for name in order:
        t = tensors[name]
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        start = t.storage_offset() * t.element_size()
        views.append((name, storage_bytes(t)[start : start + t.nbytes] if t.nbytes else memoryview(b"")))
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, views


def _refuse_shared(tensors: dict[str, torch.Tensor]) -> None:
    """safetensors' rule: tensors whose bytes overlap would be stored twice and load apart."""
    spans = sorted((t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size(), t.nbytes, name)
                   for name, t in tensors.items() if t.nbytes)  # fmt: skip
    for (a, n, first), (b, _, second) in itertools.pairwise(spans):
        if b < a + n:
            raise RuntimeError(f"Some tensors share memory, this will lead to duplicate memory on disk and potential "
                               f"differences when loading them again: [{{{first!r}, {second!r}}}] (safetensors' rule)")  # fmt: skip
