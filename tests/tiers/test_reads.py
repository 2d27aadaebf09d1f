"""Reads of warm data: prefetch and pins (a pinned model is read without any S3 request), the
disk read cache (LRU within its size limit, pins kept, damaged entries refetched), read-ahead,
and a pack that moves while it is being read."""

from __future__ import annotations

import os

import pytest
from helpers.tiers import RequestCounter, export_and_compare, import_run, tiered_settings, write_run

from chunkfs import config
from chunkfs.ops import prefetch as prefetchop
from chunkfs.ops import tier as tierop
from chunkfs.ops import transfer
from chunkfs.repo import Repository
from chunkfs.store.tiering.readcache import ReadCache
from chunkfs.types import Tier


@pytest.fixture
def warm_runs(moto_server, tmp_path):
    """Two runs (~2.3 MiB of distinct chunks each) moved to the warm tier, hot copies gone; a 3 MiB disk cache."""
    settings = tiered_settings(moto_server.endpoint, cache=config.CacheSettings(disk=3 << 20))
    repo = Repository.create(tmp_path / "repo", settings=settings)
    srcs = {}
    for n, run in enumerate(("runA", "runB")):
        srcs[run] = write_run(tmp_path / "src", run, steps=1, seed=n)
        import_run(repo, srcs[run], f"/m/{run}")
        tierop.move(repo, f"/m/{run}", Tier.WARM)
    repo.drop_caches()
    yield repo, srcs
    repo.close()


def test_prefetch_and_pin_then_read_makes_no_s3_request(warm_runs, tmp_path):
    repo, srcs = warm_runs
    s3 = RequestCounter(repo.tiers.backend(Tier.WARM))
    result = prefetchop.prefetch(repo, "/m/runA", pin=True)
    assert result.files == 3 and result.fetched_bytes == result.bytes > 0 and result.pinned
    assert s3.count("GetObject") > 0

    export_and_compare(repo, srcs["runB"], "/m/runB", tmp_path / "b")  # fills the cache past its limit
    assert repo.readcache.evicted > 0, "the cache stayed within its size"
    assert repo.readcache.usage()[0] <= 3 << 20

    repo.chunks.cache.clear()
    repo.remote.drop_staged()
    s3.reset()
    export_and_compare(repo, srcs["runA"], "/m/runA", tmp_path / "a")
    assert s3.count() == 0, f"pinned data came from the local disk, yet S3 saw {s3.calls}"

    prefetchop.unpin(repo, "/m/runA")
    repo.drop_caches(keep_pinned=True)  # nothing is pinned now
    export_and_compare(repo, srcs["runA"], "/m/runA", tmp_path / "a2")
    assert s3.count("GetObject") > 0
    with pytest.raises(Exception, match="not pinned"):
        prefetchop.unpin(repo, "/m/runA")


def test_sequential_read_uses_read_ahead(warm_runs, tmp_path):
    repo, srcs = warm_runs
    s3 = RequestCounter(repo.tiers.backend(Tier.WARM))
    content = repo.content_of(repo.ns.extents(repo.ns.resolve("/m/runA/checkpoint-100/model.safetensors")))
    data = b"".join(content.read(off, 128 << 10) for off in range(0, content.size, 128 << 10))
    assert data == (srcs["runA"] / "checkpoint-100" / "model.safetensors").read_bytes()
    chunks = len({e.chunk for e in content._extents})
    assert repo.remote.readahead_bytes > 0
    assert s3.count("GetObject") < chunks / 2, "chunks came in batches, not one GET each"


def test_a_damaged_cache_entry_is_refetched(warm_runs, tmp_path):
    repo, srcs = warm_runs
    export_and_compare(repo, srcs["runA"], "/m/runA", tmp_path / "a")
    files = [p for p in repo.readcache.root.rglob("*") if p.is_file()]
    assert files
    for p in files:  # flip one byte in every cached chunk
        data = bytearray(p.read_bytes())
        data[-1] ^= 0xFF
        p.write_bytes(bytes(data))
    repo.chunks.cache.clear()
    repo.remote.drop_staged()
    export_and_compare(repo, srcs["runA"], "/m/runA", tmp_path / "a2")


def test_reader_follows_a_pack_that_moved(warm_runs, tmp_path):
    """A location looked up before a move, read after it: the read finds the pack at its new home."""
    repo, srcs = warm_runs
    path = "/m/runB/checkpoint-100/model.safetensors"
    extents = repo.ns.extents(repo.ns.resolve(path))
    tierop.move(repo, "/m/runB", Tier.HOT)  # warm → hot (the warm object stays as a copy)
    tierop.complete(repo, "/m/runB")
    tierop.apply(repo, tierop.plan(repo))  # hot → warm again: the hot file is deleted
    content = repo.content_of(extents)
    assert content.read(0, content.size) == (srcs["runB"] / "checkpoint-100" / "model.safetensors").read_bytes()


def test_read_cache_lru_and_pins(tmp_path):
    pinned: set[bytes] = set()
    cache = ReadCache(tmp_path, 10_000, lambda: pinned)
    ids = [bytes([i]) * 32 for i in range(8)]
    pinned.add(ids[0])
    for i, chunk in enumerate(ids[:5]):
        cache.put(chunk, 0, os.urandom(1999))  # 2000 bytes each on disk
    assert cache.usage() == (10_000, 5)
    assert cache.get(ids[1]) is not None  # now the most recent
    cache.put(ids[5], 1, b"x" * 1999)  # over the limit: evict LRU down to 9,000 bytes, never the pinned one
    kept = {c for c in ids if cache.get(c) is not None}
    assert ids[0] in kept and ids[1] in kept and ids[5] in kept
    assert ids[2] not in kept
    assert cache.usage()[0] <= 10_000
    assert cache.get(ids[5]) == (1, b"x" * 1999)
    # a second process's view: files are found by name, and counted at the next rescan
    other = ReadCache(tmp_path, 10_000, lambda: set())
    assert other.get(ids[5]) == (1, b"x" * 1999)
    assert other.clear(keep_pinned=False) == len(kept)
    assert cache.get(ids[0]) is None


def test_transfer_of_a_whole_tree_from_warm_counts_activity(warm_runs, tmp_path):
    repo, _srcs = warm_runs
    transfer.export_tree(repo, "/m", tmp_path / "all")
    counters = repo.counters()
    assert counters["remote_read_bytes_warm"] > 0 and counters["read_bytes"] > 0
    assert counters["moved_packs_hot_warm"] > 0


def test_pinned_data_stays_local_when_its_packs_leave_hot(moto_server, tmp_path):
    repo = Repository.create(tmp_path / "repo", settings=tiered_settings(moto_server.endpoint))
    try:
        src = write_run(tmp_path / "src", steps=1)
        import_run(repo, src, "/m/run1")
        pinned = prefetchop.prefetch(repo, "/m/run1/checkpoint-100/model.safetensors", pin=True)
        assert pinned.fetched_bytes == 0, "on hot: nothing to fetch, only the pin"
        tierop.move(repo, "/m/run1", Tier.WARM)  # the pinned chunks are copied to the cache first
        repo.drop_caches(keep_pinned=True)
        s3 = RequestCounter(repo.tiers.backend(Tier.WARM))
        path = "/m/run1/checkpoint-100/model.safetensors"
        content = repo.content_of(repo.ns.extents(repo.ns.resolve(path)))
        assert content.read(0, content.size) == (src / "checkpoint-100" / "model.safetensors").read_bytes()
        assert s3.count() == 0
    finally:
        repo.close()
