"""``Writer`` and ``Reader``: torch.distributed.checkpoint (DCP) straight into a repository.

They are DCP's own ``FileSystemWriter`` and ``FileSystemReader`` with the repository as
their filesystem (files.py), and ``Writer`` writes a rank's files itself (``write_data``,
so that unchanged tensors are spliced: incremental.py): the same planning, the same file
names and the same bytes (``__0_0.distcp``… and ``.metadata``), so a checkpoint written by ``Writer`` reads with
plain ``FileSystemReader`` through the mount, with ``cp`` or ``chunkfs export``, and one
written through the mount reads with ``Reader``. What changes is where the bytes go:
every rank chunks, hashes and stores its own file in its own process (dedup across
ranks, steps and the mount's files), and nothing crosses FUSE. docs/torch.md shows how
to use them.
"""

from __future__ import annotations

import dataclasses
import io
import os
from concurrent.futures import ThreadPoolExecutor
from typing import IO

from torch.distributed.checkpoint.filesystem import (
    DEFAULT_SUFFIX,
    FileSystemReader,
    FileSystemWriter,
    _split_by_size_and_type,
    _StorageInfo,
)
from torch.distributed.checkpoint.planner import WriteItem, WriteItemType
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from chunkfs.torch import incremental
from chunkfs.torch.files import ReadStream, RepoFiles


class Writer(FileSystemWriter):
    """A DCP storage writer into a chunkfs repository.

    ``path``: the checkpoint directory, inside a mounted chunkfs (``/models/llama/run1/
    step-1000``), or with ``repo`` a path inside that repository (``/llama/run1/step-1000``).
    Every file is durable when DCP closes it (so ``sync_files`` is not needed: no fsync or
    ``os.sync`` is made); the checkpoint is complete once ``.metadata`` is renamed into
    place, as with ``FileSystemWriter``. The other arguments are ``FileSystemWriter``'s.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        repo: str | os.PathLike | None = None,
        single_file_per_rank: bool = True,
        thread_count: int = 1,
        per_thread_copy_ahead: int = 10_000_000,
        cache_staged_state_dict: bool = False,
        overwrite: bool = True,
    ) -> None:
        super().__init__(path, single_file_per_rank=single_file_per_rank, sync_files=False, thread_count=thread_count,
                         per_thread_copy_ahead=per_thread_copy_ahead, cache_staged_state_dict=cache_staged_state_dict,
                         overwrite=overwrite)  # fmt: skip
        self.fs = RepoFiles(repo, writable=True)
        self.path = self.fs.init_path(path)

    def prepare_local_plan(self, plan):
        with self.fs.opened():
            return super().prepare_local_plan(plan)

    def write_data(self, plan, planner) -> Future[list[WriteResult]]:
        """DCP's ``FileSystemWriter.write_data`` — the same files, items in the same order, the
        same bytes — with each tensor written by ``incremental.save_tensor``: one unchanged
        since this process last saved it is spliced from that save instead of serialized."""
        if self.single_file_per_rank:
            buckets = _split_by_size_and_type(self.thread_count, plan.items)
        else:
            buckets = [[item] for item in plan.items]
        names = [f"{plan.storage_data.prefix}{i}{DEFAULT_SUFFIX}" for i in range(len(buckets))]
        with self.fs.opened():  # one opening for every file of this rank
            if self.thread_count == 1:
                results = [r for name, items in zip(names, buckets) for r in self._write_file(name, items, planner)]
            else:
                with ThreadPoolExecutor(self.thread_count, thread_name_prefix="chunkfs-dcp") as pool:
                    results = [r for rs in pool.map(self._write_file, names, buckets, [planner] * len(buckets)) for r in rs]
        done: Future[list[WriteResult]] = Future()
        done.set_result(results)
        return done

    def _write_file(self, name: str, items: list[WriteItem], planner) -> list[WriteResult]:
        """One file of the rank: its byte items, then its tensors, as DCP orders them."""
        results = []
        with self.fs.create_stream(self.fs.concat_path(self.path, name), "wb") as stream:
            for item in [i for i in items if i.type == WriteItemType.BYTE_IO] + [i for i in items if i.type != WriteItemType.BYTE_IO]:
                offset = stream.tell()
                data = planner.resolve_data(item)
                if item.type == WriteItemType.BYTE_IO:
                    stream.write(data.getbuffer())
                else:
                    tensor = data.detach().cpu()
                    if tensor.untyped_storage().size() != tensor.nbytes:  # a view: saved as its own tensor, as DCP does
                        tensor = tensor.clone()
                    key = (self.fs.repo_dir, name, item.index.fqn, tuple(item.index.offset or ()), item.index.index)
                    incremental.save_tensor(stream, key, tensor)
                length = stream.tell() - offset
                results.append(WriteResult(index=item.index, size_in_bytes=length,
                                           storage_data=_StorageInfo(name, offset, length)))  # fmt: skip
        return results

    def finish(self, metadata, results) -> None:
        with self.fs.opened():
            super().finish(metadata, results)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return RepoFiles.validate_checkpoint_id(checkpoint_id)


class Reader(FileSystemReader):
    """A DCP storage reader from a chunkfs repository (``path`` and ``repo`` as for ``Writer``).

    Each rank reads only the byte ranges of the tensors it loads (a resharded load reads
    parts of files), from whatever tier holds their chunks, every chunk verified.
    """

    def __init__(self, path: str | os.PathLike, *, repo: str | os.PathLike | None = None) -> None:
        super().__init__(path)
        self.fs = RepoFiles(repo, writable=False)
        self.path = self.fs.init_path(path)

    def _slice_file(self, file: ReadStream, sinfo) -> IO[bytes]:
        """The item's bytes, read in one go: only the chunks under them are fetched."""
        return io.BytesIO(file.pread(sinfo.offset, sinfo.length))

    def read_metadata(self, *args, **kwargs):
        with self.fs.opened():
            return super().read_metadata(*args, **kwargs)

    def read_data(self, plan, planner):
        """DCP's read, with each file's items taken in file order: the chunks after each item
        are then fetched while it is being loaded."""
        where = {r.storage_index: self.storage_data[r.storage_index] for r in plan.items}
        items = sorted(plan.items, key=lambda r: (where[r.storage_index].relative_path, where[r.storage_index].offset))
        with self.fs.opened():
            return super().read_data(dataclasses.replace(plan, items=items), planner)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return RepoFiles.validate_checkpoint_id(checkpoint_id)
