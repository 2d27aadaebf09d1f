"""Shared helpers of the benchmark tools (tools/bench_ingest.py, tools/bench_mount.py).

Not part of the chunkfs package: plain functions for generating checkpoint-like
data, timing, medians, sizes on disk and printing result tables.

Every benchmark figure is a *ratio* against the same bytes on a plain directory
of the same disk, measured in the same run (interleaved, repeated, median), so
that the noise of a shared 2-core machine cancels out as far as possible.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

MiB = 1 << 20
GiB = 1 << 30


# -- sizes and units --------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """``512M``, ``2GiB``, ``1048576`` → bytes (binary units)."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    scale = {"k": 1 << 10, "m": MiB, "g": GiB, "t": 1 << 40}.get(t[-1:], 1)
    return int(float(t[:-1] if scale > 1 else t) * scale)


def mb_s(nbytes: int, seconds: float) -> float:
    """Throughput in MB/s (10^6 bytes per second)."""
    return nbytes / seconds / 1e6 if seconds > 0 else float("inf")


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (apparent size)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                pass
    return total


def median(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else float("nan")


# -- the page cache ---------------------------------------------------------------------------


def drop_caches() -> bool:
    """sync, then drop the page cache (root only). False if not allowed."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def fadvise_dontneed(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path: Path, block: int = 8 * MiB) -> None:
    """Read a file once so that it sits in the page cache (sources are read from memory)."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(block)
        while f.readinto(buf):
            pass


# -- copying like a checkpoint writer does -----------------------------------------------------


def copy_file(src: Path, dst: Path, block: int = MiB, fsync: bool = True) -> int:
    """Write ``src``'s bytes to a new file ``dst`` in ``block``-sized write() calls, fsync, close.

    This is what ``cp`` / a checkpoint writer does; the source is expected in
    the page cache so that only the destination is measured. Returns bytes written.
    """
    buf = bytearray(block)
    view = memoryview(buf)
    n = 0
    with open(src, "rb", buffering=0) as fi, open(dst, "wb", buffering=0) as fo:
        while k := fi.readinto(buf):
            fo.write(view[:k])
            n += k
        if fsync:
            os.fsync(fo.fileno())
    return n


def read_file(path: Path, block: int = MiB) -> int:
    """Read a file sequentially with ``block``-sized reads; return its size."""
    buf = bytearray(block)
    n = 0
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(buf):
            n += k
    return n


def timed(fn: Callable, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t0, result


# -- random bf16 safetensors files, streamed ----------------------------------------------------


def bf16_normal(rng: np.random.Generator, n: int, std: float = 0.02) -> np.ndarray:
    """``n`` bf16 values (as uint16) from N(0, std²), rounded to nearest even like torch."""
    x = rng.standard_normal(n, dtype=np.float32)
    x *= std
    return bf16_of(x)


def bf16_of(x: np.ndarray) -> np.ndarray:
    """fp32 values as bf16 (uint16), rounded to nearest even like torch."""
    u = x.astype(np.float32).view(np.uint32)
    u += 0x7FFF + ((u >> 16) & 1)
    return (u >> 16).astype(np.uint16)


def model_dims(size: int, bytes_per_param: int = 2, hidden: int | None = None) -> tuple[int, int, int, int]:
    """(vocab, hidden, intermediate, layers) of a llama-like model whose weights total about ``size`` bytes.

    The widest hidden size that still gives at least 8 layers (so that "the last
    layers" is a meaningful fraction of the model).
    """
    params = size // bytes_per_param
    for shrink in (False, True):
        for h in [hidden] if hidden else [4096, 3072, 2048, 1536, 1024, 768, 512, 384, 256]:
            inter = (h * 11 // 4 + 255) // 256 * 256
            per_layer = 4 * h * h + 3 * h * inter + 2 * h
            vocab = 32000
            if shrink:  # small sizes: a smaller vocabulary
                vocab = max(1024, min(vocab, (params - 8 * per_layer) // (2 * h)))
            layers = max(1, round((params - 2 * vocab * h) / per_layer))
            if layers >= 8 or (hidden and not shrink and layers >= 2):
                return vocab, h, inter, layers
    return vocab, h, inter, layers


def transformer_layout(size: int, hidden: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes of a llama-like model whose bf16 weights total about ``size`` bytes."""
    vocab, hidden, inter, layers = model_dims(size, 2, hidden)
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (hidden,)),
            (p + "self_attn.q_proj.weight", (hidden, hidden)),
            (p + "self_attn.k_proj.weight", (hidden, hidden)),
            (p + "self_attn.v_proj.weight", (hidden, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, hidden)),
            (p + "post_attention_layernorm.weight", (hidden,)),
            (p + "mlp.gate_proj.weight", (inter, hidden)),
            (p + "mlp.up_proj.weight", (inter, hidden)),
            (p + "mlp.down_proj.weight", (hidden, inter)),
        ]
    shapes += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return shapes


def random_layout(size: int, rng: np.random.Generator) -> list[tuple[str, tuple[int, ...]]]:
    """Shapes for a shard of ``size`` bytes: matrices of 1–32 MiB and a few vectors."""
    shapes = []
    total = 0
    i = 0
    while total < size:
        rows = int(rng.choice([1024, 2048, 4096]))
        cols = int(rng.choice([256, 1024, 2048, 4096]))
        if total + 2 * rows * cols > size:
            cols = max(1, (size - total) // (2 * rows))
        shapes.append((f"shard.tensor.{i}", (rows, cols)))
        total += 2 * rows * cols
        i += 1
    return shapes


def safetensors_header(shapes: Sequence[tuple[str, tuple[int, ...]]]) -> tuple[bytes, list[tuple[str, int, int]]]:
    """(8-byte length + JSON header, [(name, data begin, data end)]) for bf16 tensors in this order."""
    meta: dict = {"__metadata__": {"format": "pt"}}
    spans = []
    off = 0
    for name, shape in shapes:
        n = 2 * int(np.prod(shape))
        meta[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        spans.append((name, off, off + n))
        off += n
    text = json.dumps(meta, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, spans


def write_safetensors(
    path: Path,
    shapes: Sequence[tuple[str, tuple[int, ...]]],
    seed: int,
    *,
    base: Path | None = None,
    change: set[str] = frozenset(),
) -> None:
    """Stream a bf16 safetensors file of random-normal tensors (never the whole file in memory).

    With ``base``, every tensor is copied from that file except those named in
    ``change``, which get fresh random values (seeded by ``seed``).
    """
    header, spans = safetensors_header(shapes)
    rng = np.random.default_rng(seed)
    step = 8 * MiB // 2
    with open(path, "wb") as out, (open(base, "rb") if base else open(os.devnull, "rb")) as src:
        out.write(header)
        for name, begin, end in spans:
            n = (end - begin) // 2
            if base is not None and name not in change:
                src.seek(len(header) + begin)
                left = end - begin
                while left:
                    block = src.read(min(left, 8 * MiB))
                    out.write(block)
                    left -= len(block)
                continue
            out.writelines(bf16_normal(rng, min(step, n - k)).tobytes() for k in range(0, n, step))


def pick_fraction(spans: Sequence[tuple[str, int, int]], fraction: float, seed: int) -> set[str]:
    """Random tensors (by name) whose bytes add up to about ``fraction`` of the total."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(spans))
    total = sum(e - b for _, b, e in spans)
    chosen, acc = set(), 0
    for i in order:
        name, b, e = spans[i]
        if acc >= fraction * total:
            break
        if acc + (e - b) > 1.25 * fraction * total and (e - b) > 0.02 * total:
            continue  # do not overshoot with one huge tensor
        chosen.add(name)
        acc += e - b
    return chosen


# -- output -------------------------------------------------------------------------------------


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]], *, note: str = "") -> None:
    """A rich table on a terminal; plain aligned text otherwise."""
    cells = [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        Console = None
    if Console is not None:
        table = Table(title=title, caption=note or None)
        for i, c in enumerate(columns):
            table.add_column(c, justify="left" if i == 0 else "right")
        from rich.text import Text

        for row in cells:  # cells are plain text, except the explicit [green]/[red] verdicts
            table.add_row(*(Text.from_markup(c) if c.startswith(("[green]", "[red]")) else Text(c) for c in row))
        console = Console()
        if not console.is_terminal:
            console = Console(width=200)
        console.print(table)
        return
    cells = [[c.replace("[green]", "").replace("[/green]", "").replace("[red]", "").replace("[/red]", "") for c in r]
             for r in cells]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(title)
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    if note:
        print(note)


def fmt(v: object) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def code_version() -> dict:
    """The chunkfs source measured: git HEAD and whether the working tree had changes (read-only git)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, check=False, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "chunkfs"],
                               capture_output=True, check=False, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"head": None, "dirty": None}
    return {"head": head or None, "dirty": bool(dirty)}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
