"""Incremental DCP saves (chunkfs/torch/incremental.py): a tensor unchanged since this process
last saved it is spliced from that save — no torch.save, no chunk hashing — and the files are
still byte for byte what DCP's own FileSystemWriter writes; anything changed, by whatever
means, goes the full way."""

from __future__ import annotations

import pytest
from helpers.cli import chunkfs
from helpers.repos import count_chunk_hashing

from chunkfs.repo import Repository

torch = pytest.importorskip("torch", reason="chunkfs.torch needs torch (the test extra installs it)")
incremental = pytest.importorskip("chunkfs.torch.incremental")
dcp = pytest.importorskip("torch.distributed.checkpoint")

ROWS, COLS = 1024, 1280  # 5 MiB of fp32: one whole 4 MiB chunk and a remainder


class Scaled(torch.Tensor):
    """A tensor subclass (picklable: defined at module level)."""


@pytest.fixture
def repo_dir(tmp_path):
    chunkfs("init", tmp_path / "repo")
    incremental.forget_all()
    yield tmp_path / "repo"
    incremental.forget_all()


@pytest.fixture
def saves(monkeypatch):
    """Counts the tensors that went through torch.save (the full way)."""
    calls = []
    real = torch.save

    def counting(obj, f, *args, **kwargs):
        if isinstance(obj, torch.Tensor):  # DCP's planner torch.saves the non-tensor values too
            calls.append(tuple(obj.shape))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(incremental.torch, "save", counting)
    return calls


@pytest.fixture
def hashed(monkeypatch):
    """Counts the bytes that got a chunk hash (written chunks: a spliced one gets none)."""
    return count_chunk_hashing(monkeypatch)


def state_of(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {f"layer{i}.weight": torch.randn(ROWS, COLS, generator=g) for i in range(6)}
    state["layer0.bias"] = torch.randn(COLS, generator=g)  # small: always the full way
    state["step"] = 1
    return state


def save(state, repo_dir, path):
    from chunkfs.torch import Writer

    dcp.save(state, storage_writer=Writer(path, repo=repo_dir), no_dist=True)


def file_bytes(repo_dir, path: str) -> bytes:
    with Repository(repo_dir, writable=False) as repo:
        content = repo.content_of(repo.ns.extents(repo.ns.resolve(path)))
        return content.read(0, content.size)


def load(state, repo_dir, path) -> dict:
    from chunkfs.torch import Reader

    loaded = {k: torch.zeros_like(v) if isinstance(v, torch.Tensor) else -1 for k, v in state.items()}
    dcp.load(loaded, storage_reader=Reader(path, repo=repo_dir), no_dist=True)
    return loaded


def stored(repo_dir) -> int:
    from helpers.cli import cli_json

    return cli_json("stats", "--repo", repo_dir)["unique_bytes"]


def test_unchanged_tensors_are_spliced_and_the_file_is_what_dcp_writes(repo_dir, tmp_path, saves, hashed):
    state = state_of(1)
    save(state, repo_dir, "/r/step-1")
    assert len(saves) == 7, "a first save: every tensor the full way"
    state["layer4.weight"].add_(1)
    state["layer5.weight"].mul_(0.5)
    state["step"] = 2
    saves.clear()
    before, hashed[0] = stored(repo_dir), 0
    save(state, repo_dir, "/r/step-2")
    assert sorted(saves) == sorted([(COLS,), (ROWS, COLS), (ROWS, COLS)]), "the two changed layers and the bias"
    tensor = ROWS * COLS * 4
    written = 2 * tensor + 4 * (tensor - (4 << 20)) + (64 << 10)  # changed layers, the rest past whole chunks
    assert hashed[0] <= written, f"{hashed[0]} bytes chunk-hashed: unchanged chunks were not spliced"
    added = stored(repo_dir) - before
    assert added < 2 * ROWS * COLS * 4 * 1.1, f"{added} new bytes for two changed 5 MiB tensors"

    dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp_path / "plain"), no_dist=True)
    assert file_bytes(repo_dir, "/r/step-2/__0_0.distcp") == (tmp_path / "plain" / "__0_0.distcp").read_bytes()
    loaded = load(state, repo_dir, "/r/step-2")
    for k, v in state.items():
        assert torch.equal(loaded[k], v) if isinstance(v, torch.Tensor) else loaded[k] == v, k


def test_changes_torch_does_not_count_go_the_full_way(repo_dir, saves):
    """A numpy-view write and a ``.data`` swap leave ``_version`` as it was; an in-place op
    bumps it. All three are found changed by their bytes."""
    state = state_of(2)
    save(state, repo_dir, "/v/step-1")
    versions = {k: t._version for k, t in state.items() if isinstance(t, torch.Tensor)}
    state["layer1.weight"].numpy()[7, :] = 42.0
    state["layer2.weight"].data = torch.randn(ROWS, COLS)
    state["layer3.weight"].mul_(2)
    assert state["layer1.weight"]._version == versions["layer1.weight"]
    assert state["layer2.weight"]._version == versions["layer2.weight"]
    saves.clear()
    save(state, repo_dir, "/v/step-2")
    assert sorted(saves) == sorted([(COLS,), (ROWS, COLS), (ROWS, COLS), (ROWS, COLS)])
    loaded = load(state, repo_dir, "/v/step-2")
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(loaded[k], v), f"{k} as it was at the second save"


def test_a_remembered_chunk_that_is_gone_means_the_bytes_are_written(repo_dir, tmp_path, saves):
    """If gc took a chunk a remembered save names (or the memory is wrong in any way the store
    can tell), the splice is refused and the tensor's bytes are written: same file, loads;
    and that write is remembered, so the save after it splices again."""
    from chunkfs.types import Extent

    state = state_of(3)
    save(state, repo_dir, "/g/step-1")
    with incremental._lock:
        for remembered in incremental._remembered.values():
            remembered.chunks = [Extent(e.length, bytes([7]) * 32) for e in remembered.chunks]  # stored nowhere
    save(state, repo_dir, "/g/step-2")
    assert file_bytes(repo_dir, "/g/step-2/__0_0.distcp") == file_bytes(repo_dir, "/g/step-1/__0_0.distcp")
    loaded = load(state, repo_dir, "/g/step-2")
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if isinstance(v, torch.Tensor))
    saves.clear()
    save(state, repo_dir, "/g/step-3")
    assert saves == [(COLS,)], "only the small bias the full way: the big ones spliced again"
    assert file_bytes(repo_dir, "/g/step-3/__0_0.distcp") == file_bytes(repo_dir, "/g/step-1/__0_0.distcp")
    chunkfs("fsck", "--repo", repo_dir)


@pytest.mark.parametrize("options", [{"single_file_per_rank": False}, {"thread_count": 3}])
def test_the_files_are_dcps_with_one_file_per_item_or_several_threads(repo_dir, tmp_path, options):
    from chunkfs.torch import Writer

    state = state_of(4)
    dcp.save(state, storage_writer=Writer("/f/step-1", repo=repo_dir, **options), no_dist=True)
    dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp_path / "plain", **options), no_dist=True)
    plain = sorted(p.name for p in (tmp_path / "plain").iterdir())
    with Repository(repo_dir, writable=False) as repo:
        mine = sorted(n.decode() for n, _, _ in repo.ns.readdir(repo.ns.resolve("/f/step-1")))
    assert mine == plain and len(plain) > 2
    for name in plain:
        if name != ".metadata":
            assert file_bytes(repo_dir, f"/f/step-1/{name}") == (tmp_path / "plain" / name).read_bytes(), name
    loaded = load(state, repo_dir, "/f/step-1")
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if isinstance(v, torch.Tensor))


def test_a_tensor_that_pickles_more_than_its_bytes_always_goes_the_full_way(repo_dir, saves):
    """A tensor subclass, or one with Python attributes, carries more than its bytes into the
    archive (a float8 scale, a quantization's parameters): never spliced."""
    state = state_of(5)
    state["layer1.weight"] = state["layer1.weight"].as_subclass(Scaled)
    save(state, repo_dir, "/s/step-1")
    saves.clear()
    save(state, repo_dir, "/s/step-2")
    assert len(saves) == 2, f"the subclass and the small bias the full way, the rest spliced: {saves}"
