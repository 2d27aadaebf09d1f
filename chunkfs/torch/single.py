"""``save`` / ``load`` and ``save_file`` / ``load_file``: single-process checkpoints written in-process.

The drop-in counterparts of ``torch.save`` / ``torch.load`` and safetensors'
``save_file`` / ``load_file`` for code that is not distributed: the same bytes as the
originals (a ``torch.save`` zip, a safetensors file), written into the repository by the
calling process (files.py) instead of through the mount — so they cost no FUSE round
trips, and the file is a durable version when the call returns.

``path`` is a file path inside a mounted chunkfs, or with ``repo=`` a path inside that
repository (files.py, ``locate``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from chunkfs.repo import Repository
from chunkfs.torch import incremental, safetensors_stream
from chunkfs.torch.files import ReadStream, WriteStream, locate


@contextlib.contextmanager
def _writing(path: str | os.PathLike, repo: str | os.PathLike | None) -> Iterator[WriteStream]:
    repo_dir, repo_path = locate(path, repo)
    with Repository.for_writing(repo_dir) as r:
        r.ns.makedirs(repo_path.rpartition("/")[0], os.getuid(), os.getgid())
        with WriteStream(r, repo_path) as stream:
            yield stream


@contextlib.contextmanager
def _reading(path: str | os.PathLike, repo: str | os.PathLike | None) -> Iterator[ReadStream]:
    repo_dir, repo_path = locate(path, repo)
    with Repository(repo_dir, writable=False) as r, ReadStream(r, repo_path) as stream:
        yield stream


def save(obj: Any, path: str | os.PathLike, *, repo: str | os.PathLike | None = None, **kwargs) -> None:
    """``torch.save(obj, path, **kwargs)``, written into the repository by this process. Each
    storage torch writes (one write of its memory) whose bytes this process wrote before as the
    same storage of a file of this name is spliced from that save (incremental.py)."""
    with _writing(path, repo) as stream:
        torch.save(obj, _Storages(stream, (str(stream.repo.path), os.path.basename(path))), **kwargs)


class _Storages:
    """What ``torch.save`` writes into: its archive's small records go to the stream as they are;
    a write of at least a chunk (a storage's bytes: torch writes each in one piece, from its
    memory) goes through ``incremental.save_bytes``, keyed by the file's name and its place
    among them — the digest check makes any key safe, the place makes it usually right."""

    def __init__(self, stream: WriteStream, key: tuple) -> None:
        self.stream = stream
        self._key = key
        self._storages = 0

    def write(self, b) -> int:
        view = memoryview(b)
        if view.nbytes < self.stream.chunk_size or not view.c_contiguous:
            return self.stream.write(b)
        self._storages += 1
        incremental.save_bytes(self.stream, (*self._key, self._storages), view.cast("B"))
        return view.nbytes

    def flush(self) -> None:
        pass

    def tell(self) -> int:
        return self.stream.tell()


def load(path: str | os.PathLike, *, repo: str | os.PathLike | None = None, **kwargs) -> Any:
    """``torch.load(path, **kwargs)`` from the repository (``mmap=True`` needs a real file: read
    through the mount for that)."""
    with _reading(path, repo) as stream:
        return torch.load(stream, **kwargs)


def save_file(
    tensors: dict[str, torch.Tensor],
    filename: str | os.PathLike,
    metadata: dict[str, str] | None = None,
    *,
    repo: str | os.PathLike | None = None,
) -> None:
    """safetensors' ``save_file``, written into the repository by this process: the same bytes,
    streamed from the tensors' memory (safetensors_stream.py) rather than built in memory first.
    A tensor whose bytes this process saved before under the same file name (``model.safetensors``
    of the previous step) and tensor name is spliced from that save (incremental.py)."""
    planned = safetensors_stream.layout(tensors, metadata)
    if planned is None:
        from safetensors.torch import save as serialize

        planned = serialize(tensors, metadata=metadata), []
    head, views = planned
    with _writing(filename, repo) as stream:
        stream.write(head)
        for name, view in views:
            key = (str(stream.repo.path), os.path.basename(filename), name)  # the file's name, step after step
            incremental.save_bytes(stream, key, view)


def load_file(
    filename: str | os.PathLike, device: str | int = "cpu", *, repo: str | os.PathLike | None = None
) -> dict[str, torch.Tensor]:
    """safetensors' ``load_file`` from the repository."""
    from safetensors.torch import load as deserialize

    with _reading(filename, repo) as stream:
        data = stream.pread(0, stream.size)
    tensors = deserialize(data)
    return tensors if device == "cpu" else {k: v.to(device) for k, v in tensors.items()}
