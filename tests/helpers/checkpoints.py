"""Real checkpoints for the tests: small models saved with ``torch.save`` and ``safetensors``.

Checkpoints are made here from seeded random tensors, so every run sees the same bytes. The
model is a small stack of linear layers (weights 256x256 fp32 = 256 KiB, biases 1 KiB) plus a
head: big enough to span several 64 KiB chunks per tensor, small enough to import a series of
them in well under a second. ``data_regions`` and friends read where a file keeps its tensors.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path

import safetensors.torch
import torch

WIDTH = 256
LAYERS = 8
VOCAB = 256


def base_model(seed: int = 0, *, lora_rank: int = 0) -> dict[str, torch.Tensor]:
    """A freshly initialised model's state dict (every tensor random, none zero).

    With ``lora_rank`` each layer also carries a LoRA adapter: ``lora_A`` random,
    ``lora_B`` zero (as PEFT initialises it).
    """
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for i in range(LAYERS):
        sd[f"layers.{i}.weight"] = torch.randn(WIDTH, WIDTH, generator=g)
        sd[f"layers.{i}.bias"] = torch.randn(WIDTH, generator=g)
        if lora_rank:
            sd[f"layers.{i}.lora_A"] = torch.randn(lora_rank, WIDTH, generator=g)
            sd[f"layers.{i}.lora_B"] = torch.zeros(WIDTH, lora_rank)
    sd["head.weight"] = torch.randn(VOCAB, WIDTH, generator=g)
    sd["head.bias"] = torch.randn(VOCAB, generator=g)
    return sd


def step(sd: dict[str, torch.Tensor], names: Iterable[str] | None, seed: int, lr: float = 1e-3) -> dict:
    """One optimiser step: ``names`` (all tensors if None) move a little; the rest are shared."""
    g = torch.Generator().manual_seed(10_000 + seed)
    changed = set(sd) if names is None else set(names)
    return {k: (v + lr * torch.randn(v.shape, generator=g) if k in changed else v) for k, v in sd.items()}


def save(sd: dict[str, torch.Tensor], path: Path, fmt: str) -> Path:
    """Write ``sd`` as ``fmt`` ('safetensors' or 'torch') to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        safetensors.torch.save_file(sd, str(path))
    elif fmt == "torch":
        torch.save(sd, path)
    else:
        raise ValueError(fmt)
    return path


def tensor_bytes(sd: dict[str, torch.Tensor], names: Iterable[str]) -> int:
    return sum(sd[n].numel() * sd[n].element_size() for n in names)


def data_regions(path: Path, fmt: str) -> list[tuple[int, int]]:
    """(start, end) of every tensor's bytes in the file, in file order, read from the file itself."""
    data = path.read_bytes()
    if fmt == "safetensors":
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8 : 8 + n])
        spans = [v["data_offsets"] for k, v in header.items() if k != "__metadata__"]
        return sorted((8 + n + b, 8 + n + e) for b, e in spans)
    out = []
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            if "/data/" not in info.filename:
                continue
            name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
            start = info.header_offset + 30 + name_len + extra_len
            out.append((start, start + info.compress_size))
    return sorted(out)


def metadata_bytes(path: Path, fmt: str) -> int:
    """Bytes of the file that record sizes or checksums of the tensors, so may change with any.

    safetensors: the length prefix and the JSON header. torch.save: everything
    after the last tensor's data (its descriptor, the central directory with every
    entry's CRC-32, the end records).
    """
    regions = data_regions(path, fmt)
    if fmt == "safetensors":
        return regions[0][0]
    return path.stat().st_size - regions[-1][1]


def allowed_growth(path: Path, fmt: str, sd: dict[str, torch.Tensor], changed: list[str], min_chunk: int):
    """(bytes of the changed tensors, the most a checkpoint may add beyond them), from the file.

    Beyond its own bytes a changed tensor may make new: the bytes between its data
    and the next tensor's (torch: the data descriptor with the new CRC-32 and the
    next local header), and when it is smaller than ``min_chunk`` the tiny
    neighbours it is merged with (under ``min_chunk``); plus the metadata.
    """
    data = path.read_bytes()
    regions = data_regions(path, fmt)
    slack = metadata_bytes(path, fmt)
    for name in changed:
        raw = sd[name].contiguous().numpy().tobytes()
        (i,) = [i for i, (b, e) in enumerate(regions) if data[b:e] == raw]
        if i + 1 < len(regions):
            slack += regions[i + 1][0] - regions[i][1]
        if len(raw) < min_chunk:
            slack += min_chunk
    return tensor_bytes(sd, changed), slack
