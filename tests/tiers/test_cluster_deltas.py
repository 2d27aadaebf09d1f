"""Delta chunks in a repository shared by several nodes (docs/multinode.md, "Moving chunks:
relocate"; docs/tiers.md, "Delta chunks"): the node that re-encodes a run on the way to warm
stores older checkpoints as deltas of newer ones, and its relocate change carries each delta's
base, so that every node reads them, keeps their bases through gc and stages them with
``prefetch``. Driven through the library on one moto server (helpers/clusternodes.py)."""

from __future__ import annotations

import os
from pathlib import Path

from helpers.clusternodes import export, gc_on, nodes, sync_all
from helpers.gc import rmtree
from helpers.repos import same_tree
from helpers.tiers import bf16_checkpoint, import_run

from chunkfs import clock
from chunkfs.ops import prefetch as prefetchop
from chunkfs.ops import tier as tierop
from chunkfs.ops.fsck import fsck
from chunkfs.repo import Repository
from chunkfs.types import ChunkKind, Tier, flags_kind

RUN = "/m/run1"
STEPS = (100, 200, 300)


def _series(root: Path) -> Path:
    """Three bf16 checkpoints a few optimizer steps apart (the older two pair with the newest),
    each with a random file no other one shares."""
    for step in STEPS:
        d = root / "run1" / f"checkpoint-{step}"
        bf16_checkpoint(d / "model.safetensors", seed=0, step=step // 100)
        (d / "rng_state.bin").write_bytes(os.urandom(300_000))
    return root / "run1"


def _deltas(path: Path) -> dict[bytes, bytes]:
    """The ``deltas`` table of node ``path``, checked against the kinds its index locates."""
    with Repository(path, writable=False) as repo, repo.index.read() as t:
        rows = dict(t.deltas())
        kinds = {c: flags_kind(loc.flags) for c, loc in t.chunks()}
    assert {c for c, k in kinds.items() if k == ChunkKind.DELTA} == set(rows), f"{path.name}: every delta listed"
    return rows


def _chunks(repo: Repository, checkpoint: str) -> set[bytes]:
    return {e.chunk for name in ("model.safetensors", "rng_state.bin")
            for e in repo.ns.extents(repo.ns.resolve(f"{RUN}/{checkpoint}/{name}"))}  # fmt: skip


def _reads_and_checks(node: Path, src: Path, dest: Path, names) -> None:
    with Repository(node, writable=False) as repo:
        repo.drop_caches()
        report = fsck(repo)
        assert report.ok, (node.name, report.as_dict())
    out = dest / node.name
    out.mkdir(parents=True)
    for name in names:
        export(node, f"{RUN}/{name}", out)
        same_tree(src / name, out / name)


def _re_encoded_on_the_first_of_two(tmp_path: Path, endpoint: str):
    """Two nodes; the first imports the series, both sync, then the first completes the run and
    re-encodes it on its way to warm (not published yet). Returns (a, b, src, tier outcome)."""
    _, (a, b) = nodes(tmp_path, endpoint, 2)
    src = _series(tmp_path / "src")
    with Repository(a) as repo:
        import_run(repo, src, RUN)
    sync_all(a, b)
    with Repository(a) as repo:
        tierop.complete(repo, RUN)
        outcome = tierop.apply(repo, tierop.plan(repo))
    return a, b, src, outcome


def test_a_run_re_encoded_with_deltas_reads_and_survives_gc_on_every_node(tmp_path, moto_server):
    a, b, src, outcome = _re_encoded_on_the_first_of_two(tmp_path, moto_server.endpoint)
    assert outcome.written["warm"]["deltas"] > 0, outcome.to_json()
    owner = _deltas(a)
    assert owner, "the older checkpoints are deltas of the newer"

    sync_all(a, b)  # a publishes the relocate change, b applies it
    assert _deltas(b) == owner, "b learnt every delta's base from the change"
    _reads_and_checks(b, src, tmp_path / "read", [f"checkpoint-{s}" for s in STEPS])

    with Repository(b) as repo:  # prefetch on the other node stages the bases of what it stages
        staged = prefetchop.prefetch(repo, f"{RUN}/checkpoint-100", pin=True)
        assert staged.chunks > len(_chunks(repo, "checkpoint-100")), "the bases of its deltas are staged too"

    # the newest checkpoint, which holds the bases, is removed on the node that did not write it;
    # a gc there must keep the bases of the older checkpoints' deltas on every node
    with Repository(b) as repo:
        newest = _chunks(repo, "checkpoint-300")
        older = _chunks(repo, "checkpoint-100") | _chunks(repo, "checkpoint-200")
        rmtree(repo, f"{RUN}/checkpoint-300")
    needed, unneeded = newest & set(owner.values()), newest - set(owner.values()) - older
    assert needed and unneeded, "checkpoint-300 holds bases and chunks nothing else needs"
    sync_all(b, a)
    result = gc_on(b, lambda: sync_all(a), keep_within="0s")
    assert result.chunks_swept >= len(unneeded), result.to_json()
    sync_all(a, b, a)
    for node in (a, b):
        with Repository(node, writable=False) as repo, repo.index.read() as t:
            assert all(t.chunk_get(c) is not None for c in needed), f"{node.name}: a base was dropped"
            assert not any(t.chunk_get(c) or t.condemned_location(c) for c in unneeded), f"{node.name}: not swept"
        _reads_and_checks(node, src, tmp_path / "after-gc", ["checkpoint-100", "checkpoint-200"])
        assert _deltas(node), f"{node.name}: the deltas stay deltas"


def test_a_relocate_that_makes_a_delta_of_a_condemned_base_brings_the_base_back(tmp_path, moto_server):
    """A node may apply another node's relocate after a gc entry condemned the new delta's base
    there (the owner's keep of the base comes later in the log): the base comes back at once, so
    the delta reads and no sweep computed on that node lists its base."""
    a, b, src, _ = _re_encoded_on_the_first_of_two(tmp_path, moto_server.endpoint)
    bases = set(_deltas(a).values())
    with Repository(b) as repo, repo.index.write() as t:  # forced: as a gc entry applied first would
        epoch = t.gc_epoch_bump()
        for chunk in bases:
            t.condemn(chunk, t.chunk_get(chunk), epoch, clock.now_ns())
    sync_all(a, b)
    with Repository(b, writable=False) as repo, repo.index.read() as t:
        assert all(t.chunk_get(c) is not None and t.condemned_location(c) is None for c in bases)
        assert {i.tier for p, i in t.packs() if t.foreign(p)} == {Tier.WARM}
    _reads_and_checks(b, src, tmp_path / "read", [f"checkpoint-{s}" for s in STEPS])


def test_only_the_re_encoding_nodes_own_chunks_pair_up(tmp_path, moto_server):
    """The newest checkpoint written on another node (in that node's packs) is no base: a base
    moves with its deltas, and another node's packs move with that node."""
    _, (a, b) = nodes(tmp_path, moto_server.endpoint, 2)
    src = _series(tmp_path / "src")
    with Repository(a) as repo:
        for step in STEPS[:-1]:
            import_run(repo, src / f"checkpoint-{step}", f"{RUN}/checkpoint-{step}")
    with Repository(b) as repo:
        import_run(repo, src / f"checkpoint-{STEPS[-1]}", f"{RUN}/checkpoint-{STEPS[-1]}")
    sync_all(a, b, a)
    with Repository(a) as repo:
        tierop.complete(repo, RUN)
        tierop.apply(repo, tierop.plan(repo))
        with repo.index.read() as t:
            bases = set(dict(t.deltas()).values())
            assert bases, "checkpoint-100 is a delta of checkpoint-200"
            assert not any(t.foreign(t.chunk_get(c).pack) for c in bases), "a base in another node's pack"
            assert bases <= _chunks(repo, f"checkpoint-{STEPS[1]}")
    sync_all(a, b)
    _reads_and_checks(b, src, tmp_path / "read", [f"checkpoint-{s}" for s in STEPS])
