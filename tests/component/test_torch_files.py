"""chunkfs.torch's file layer (chunkfs/torch/files.py) in one process: where a checkpoint path
leads, what a failed stream leaves, how reads seek, and a writer handed to another process."""

from __future__ import annotations

import io
import os
import pickle

import pytest
from helpers.cli import chunkfs
from helpers.repos import count_chunk_hashing

from chunkfs.errors import UsageError
from chunkfs.repo import Repository

pytest.importorskip("torch", reason="chunkfs.torch needs torch (the test extra installs it)")
files = pytest.importorskip("chunkfs.torch.files")


@pytest.fixture
def repo_dir(tmp_path):
    chunkfs("init", tmp_path / "repo")
    return tmp_path / "repo"


def read(repo_dir, path: str) -> bytes:
    with Repository(repo_dir, writable=False) as repo:
        content = repo.content_of(repo.ns.extents(repo.ns.resolve(path)))
        return content.read(0, content.size)


def test_a_path_outside_any_mount_needs_its_repository(tmp_path, repo_dir):
    with pytest.raises(UsageError, match=r"not inside a mounted chunkfs; give the repository too"):
        files.locate(tmp_path / "ckpt", None)
    assert files.locate("llama/step-1/", repo_dir) == (repo_dir, "/llama/step-1")


def test_a_stream_closed_commits_a_version_and_a_failed_one_commits_nothing(repo_dir):
    fs = files.RepoFiles(repo_dir, writable=True)
    fs.mkdir("/ck/step-1")
    with fs.create_stream("/ck/step-1/a.distcp", "wb") as f:
        f.write(b"x" * 100_000)
        f.write(memoryview(b"y" * 5))
        assert f.tell() == 100_005
    assert read(repo_dir, "/ck/step-1/a.distcp") == b"x" * 100_000 + b"y" * 5

    with pytest.raises(RuntimeError), fs.create_stream("/ck/step-1/a.distcp", "wb") as f:
        f.write(b"partial")
        raise RuntimeError("the rank failed")
    assert read(repo_dir, "/ck/step-1/a.distcp") == b"x" * 100_000 + b"y" * 5, "the last version stays"

    with pytest.raises(RuntimeError), fs.create_stream("/ck/step-1/b.distcp", "wb") as f:
        f.write(b"partial")
        raise RuntimeError("the rank failed")
    assert not fs.exists("/ck/step-1/b.distcp"), "a new file that failed is gone again"
    assert fs.ls("/ck/step-1") == ["/ck/step-1/a.distcp"]


def test_reads_seek_and_stop_at_the_end(repo_dir):
    fs = files.RepoFiles(repo_dir, writable=True)
    data = os.urandom(300_000)
    fs.mkdir("/r")
    with fs.create_stream("/r/f", "wb") as f:
        f.write(data)
    fs.rename("/r/f", "/r/g")
    with fs.create_stream("/r/g", "rb") as f:
        assert f.seek(-10, io.SEEK_END) == len(data) - 10
        assert f.read(100) == data[-10:]
        assert f.read(5) == b""
        f.seek(1000)
        assert f.read(7) == data[1000:1007]
        assert f.pread(299_990, 50) == data[299_990:]
        assert f.tell() == 1007


def test_a_writer_handed_to_another_process_opens_the_repository_there(repo_dir):
    from chunkfs.torch import Writer

    w = Writer("/ck/step-9", repo=repo_dir)
    with w.fs.opened():
        clone = pickle.loads(pickle.dumps(w))  # an open repository is not part of it
    assert clone.path == "/ck/step-9" and clone.fs.repo_dir == repo_dir
    with clone.fs.opened() as repo:
        assert repo.writable


def test_save_and_load_write_what_torch_and_safetensors_write(repo_dir, tmp_path):
    """Same bytes as torch.save / save_file to a plain file, read back by load / load_file;
    a second save with one tensor changed stores about that tensor."""
    import torch
    from safetensors.torch import save_file as plain_save_file

    import chunkfs.torch as ct

    g = torch.Generator().manual_seed(0)
    state = {f"layer{i}.weight": torch.randn(512, 512, generator=g) for i in range(4)}
    ct.save_file(state, "/st/model.safetensors", {"step": "1"}, repo=repo_dir)
    plain_save_file(state, tmp_path / "plain.safetensors", {"step": "1"})
    assert read(repo_dir, "/st/model.safetensors") == (tmp_path / "plain.safetensors").read_bytes()
    loaded = ct.load_file("/st/model.safetensors", repo=repo_dir)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())

    ct.save({"model": state, "step": 1}, "/pt/ckpt.pt", repo=repo_dir)
    back = ct.load("/pt/ckpt.pt", repo=repo_dir, weights_only=True)
    assert back["step"] == 1 and all(torch.equal(back["model"][k], v) for k, v in state.items())
    assert torch.load(io.BytesIO(read(repo_dir, "/pt/ckpt.pt")), weights_only=True)["step"] == 1, "a torch.save zip"

    before = stored(repo_dir)
    state["layer3.weight"] += 1  # one 1 MiB tensor of four changes
    ct.save_file(state, "/st/model.safetensors", {"step": "2"}, repo=repo_dir)
    assert stored(repo_dir) - before < 1.25 * (1 << 20)
    with Repository(repo_dir, writable=False) as repo:
        assert len(repo.history.log("/st/model.safetensors")) == 2, "two versions"


def stored(repo_dir) -> int:
    from helpers.cli import cli_json

    return cli_json("stats", "--repo", repo_dir)["unique_bytes"]


def test_changes_torch_does_not_count_are_stored_and_unchanged_tensors_are_not(repo_dir):
    """An incremental save decides by the bytes (every tensor hashed), never by torch's
    ``_version`` counter or the storage: a write through a numpy view and a ``.data`` swap do
    not bump the counter, an in-place op does; all three must reach the next save, and the
    tensors nobody touched must cost no new bytes."""
    import torch
    import torch.distributed.checkpoint as dcp

    from chunkfs.torch import Reader, Writer

    g = torch.Generator().manual_seed(1)
    state = {f"t{i}": torch.randn(256, 1024, generator=g) for i in range(8)}  # 1 MiB each
    dcp.save(state, storage_writer=Writer("/inc/step-1", repo=repo_dir), no_dist=True)
    versions = {k: t._version for k, t in state.items()}

    state["t1"].numpy()[7, :] = 42.0  # through a numpy view: _version unchanged
    state["t2"].data = torch.randn(256, 1024, generator=g)  # a .data swap: _version unchanged
    state["t3"].mul_(2)  # in place: _version bumped
    assert state["t1"]._version == versions["t1"] and state["t2"]._version == versions["t2"]
    before = stored(repo_dir)
    dcp.save(state, storage_writer=Writer("/inc/step-2", repo=repo_dir), no_dist=True)
    added = stored(repo_dir) - before

    loaded = {k: torch.zeros_like(t) for k, t in state.items()}
    dcp.load(loaded, storage_reader=Reader("/inc/step-2", repo=repo_dir), no_dist=True)
    for k, t in state.items():
        assert torch.equal(loaded[k], t), f"{k} as it was at the second save"
    assert (1 << 20) * 2.5 < added < (1 << 20) * 3.5, f"{added} new bytes: three 1 MiB tensors changed, five did not"


def test_a_writer_with_several_threads_writes_several_files_at_once(repo_dir):
    """``thread_count=4``: DCP's writer splits a rank's items over four files written by four
    threads at once, each its own stream into the one repository."""
    import torch
    import torch.distributed.checkpoint as dcp

    from chunkfs.torch import Reader, Writer

    g = torch.Generator().manual_seed(2)
    state = {f"t{i}": torch.randn(128, 1024, generator=g) for i in range(8)}
    dcp.save(state, storage_writer=Writer("/mt/step-1", repo=repo_dir, thread_count=4), no_dist=True)
    with Repository(repo_dir, writable=False) as repo:
        names = sorted(name for name, _, _ in repo.ns.readdir(repo.ns.resolve("/mt/step-1")))
    assert names == [b".metadata", b"__0_0.distcp", b"__0_1.distcp", b"__0_2.distcp", b"__0_3.distcp"]
    loaded = {k: torch.zeros_like(t) for k, t in state.items()}
    dcp.load(loaded, storage_reader=Reader("/mt/step-1", repo=repo_dir), no_dist=True)
    assert all(torch.equal(loaded[k], t) for k, t in state.items())


def test_save_file_streams_safetensors_bytes_and_keeps_its_rules(repo_dir, tmp_path):
    """save_file writes the header and then each tensor from its memory (no file-sized buffer):
    the bytes safetensors writes, for every dtype it orders, slices of one storage and empty
    tensors; and safetensors' refusals (non-contiguous, shared memory) stay."""
    import torch
    from safetensors.torch import save as plain_save

    import chunkfs.torch as ct

    big = torch.randn(64, 64)
    tensors = {"b.weight": torch.randn(3, 2), "a.bias": torch.zeros(3, dtype=torch.float16), "c": torch.arange(5),
               "aa": torch.ones(1, dtype=torch.bfloat16), "z8": torch.ones(3, dtype=torch.uint8), "e": torch.zeros(0, 4),
               "s1": big[:16], "s2": big[16:32], "f8": torch.ones(4, dtype=torch.float8_e4m3fn),
               "flag": torch.tensor([True, False]), "d": torch.randn(3, dtype=torch.float64)}  # fmt: skip
    for i, meta in enumerate(({"step": "1"}, {}, None)):  # one key: safetensors orders several at random
        ct.save_file(tensors, f"/st/m{i}.safetensors", meta, repo=repo_dir)
        assert read(repo_dir, f"/st/m{i}.safetensors") == plain_save(tensors, metadata=meta), meta
    with pytest.raises(ValueError, match="non contiguous"):
        ct.save_file({"t": torch.zeros(3, 4).t()}, "/st/bad.safetensors", repo=repo_dir)
    with pytest.raises(RuntimeError, match="share memory"):
        ct.save_file({"a": big, "b": big[2:5]}, "/st/bad.safetensors", repo=repo_dir)


def _torch_bytes(state) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _safetensors_bytes(state) -> bytes:
    from safetensors.torch import save

    return save(state)


@pytest.mark.parametrize(
    ("saver", "loader", "original"),
    [("save_file", "load_file", _safetensors_bytes), ("save", "load", _torch_bytes)],
)
def test_single_process_saves_splice_what_the_last_save_of_that_file_name_had(repo_dir, monkeypatch, saver, loader, original):
    """``save_file`` / ``save`` step after step (``…/step-N/model…``): a tensor with the bytes it
    had at the last save is spliced, not chunk-hashed; one changed by any means (a write
    through a numpy view does not bump ``_version``) is written; the file is the original's."""
    import torch

    import chunkfs.torch
    from chunkfs.torch import incremental

    save, load = getattr(chunkfs.torch, saver), getattr(chunkfs.torch, loader)
    incremental.forget_all()
    hashed = count_chunk_hashing(monkeypatch)
    g = torch.Generator().manual_seed(2)
    state = {f"t{i}": torch.randn(1024, 1024, generator=g) for i in range(6)}  # 4 MiB each: one whole chunk
    state["bias"] = torch.randn(16, generator=g)
    save(state, "/st/step-1/model", repo=repo_dir)
    assert hashed[0] >= 6 * (4 << 20), "a first save hashes everything"

    state["t2"].numpy()[3, :] = 42.0  # _version unchanged: only the bytes tell
    state["t5"].add_(1)
    hashed[0] = 0
    save(state, "/st/step-2/model", repo=repo_dir)
    assert 2 * (4 << 20) <= hashed[0] < 2 * (4 << 20) + (64 << 10), f"{hashed[0]} bytes hashed for two changed tensors"
    assert read(repo_dir, "/st/step-2/model") == original(state)
    loaded = load("/st/step-2/model", repo=repo_dir)
    assert all(torch.equal(loaded[k], t) for k, t in state.items())
    incremental.forget_all()


def test_what_a_process_remembers_stays_bounded_when_every_save_has_a_new_name(repo_dir, monkeypatch):
    """A process naming its files by step never saves one name twice: the least recently saved
    items are forgotten beyond ``REMEMBERED_MAX``, and the newest still splice."""
    import torch

    from chunkfs.torch import incremental, save_file

    incremental.forget_all()
    monkeypatch.setattr(incremental, "REMEMBERED_MAX", 3)
    tensor = {"w": torch.randn(1024, 1024, generator=torch.Generator().manual_seed(3))}  # one whole chunk
    for step in range(5):
        save_file(tensor, f"/named/model-step{step}.safetensors", repo=repo_dir)
    names = [key[1] for key in incremental._remembered]
    assert names == [f"model-step{s}.safetensors" for s in (2, 3, 4)], names
    incremental.forget_all()
