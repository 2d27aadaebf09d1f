"""Retention rules through the library API: HF-style rotation with keep-last, keep-best by a
metric, keep-within 0s, tags and the current tree always kept."""

from __future__ import annotations

import contextlib
import json

import pytest
from helpers.cli import chunkfs, cli_json
from helpers.gc import block, content, hot_bytes, read, read_at, rmtree, write

from chunkfs.engine import codec
from chunkfs.errors import UsageError
from chunkfs.ops import gc, retention
from chunkfs.store.backends.local import LocalBackend
from chunkfs.store.pack.files import read_entries

STEPS = (100, 200, 300, 400, 500)
SHARED = tuple(range(8))  # blocks every checkpoint has (frozen layers)
LOSS = {100: 0.9, 200: 0.5, 300: 0.7, 400: 0.4, 500: 0.8}


def unique(step: int) -> tuple[int, ...]:
    return tuple(1000 + step * 10 + i for i in range(4))


def model(step: int) -> bytes:
    return content(*SHARED, *unique(step))


def trainer_state(step: int) -> bytes:
    return json.dumps({"global_step": step, "log_history": [{"step": step, "eval_loss": LOSS[step]}]}).encode()


def train(repo, *, save_total_limit: int, tag_after: int | None = None) -> dict[int, int]:
    """Write checkpoints like the HF Trainer: save, then delete the oldest beyond the limit.
    Returns step → the commit right after that checkpoint was saved."""
    commits = {}
    for s in STEPS:
        d = f"/m/run1/checkpoint-{s}"
        write(repo, f"{d}/model.bin", model(s))
        write(repo, f"{d}/trainer_state.json", trainer_state(s))
        commits[s] = repo.history.last_commit()
        if tag_after == s:
            repo.history.tag("keep", commits[s])
        saved = [x for x in STEPS if x <= s]
        for old in saved[:-save_total_limit]:
            with contextlib.suppress(Exception):  # already rotated away
                rmtree(repo, f"/m/run1/checkpoint-{old}")
    repo.packs.seal_all()  # gc leaves open packs alone (a writer appends to them)
    return commits


def ids(seeds) -> set[bytes]:
    return {codec.chunk_id(block(s)) for s in seeds}


def stored_ids(repo) -> set[bytes]:
    """Every chunk id whose bytes are in some pack file of the hot tier."""
    hot = LocalBackend(repo.path / "hot")
    out = set()
    for name in hot.list("packs/"):
        entries, _ = read_entries(hot, name)
        out.update(e.chunk for e in entries)
    return out


def test_hf_rotation_keep_last_2_frees_unique_chunks_keeps_shared(make_repo):
    repo = make_repo(repack_below=0.99)
    train(repo, save_total_limit=2)
    before = hot_bytes(repo.path)
    rules = retention.rules_for(repo.settings, keep_last=2)
    dry = gc.run(repo, rules, dry_run=True)
    rotated = {f"/m/run1/checkpoint-{s}/{f}" for s in (100, 200, 300) for f in ("model.bin", "trainer_state.json")}
    assert {d["path"] for d in dry.dropped if d["size"]} == rotated  # 400 and 500: current
    assert dry.bytes_freeable >= 12 * (64 << 10)  # the unique blocks of 100, 200, 300 at least
    assert hot_bytes(repo.path) == before  # a dry run changes nothing

    result = gc.run(repo, rules)
    assert {d["path"] for d in result.dropped if d["size"]} == rotated
    assert result.chunks_swept >= 12 and result.chunks_waiting == 0
    assert hot_bytes(repo.path) < before - 10 * (64 << 10)
    present = stored_ids(repo)
    gone = ids(unique(100)) | ids(unique(200)) | ids(unique(300))
    assert not gone & present, "dropped checkpoints' unique chunks remain"
    assert ids(SHARED) <= present and ids(unique(400)) | ids(unique(500)) <= present
    with repo.index.read() as t:
        for c in gone:
            assert t.chunk_get(c) is None and t.condemned_get(c) is None
    for s in (400, 500):
        assert read(repo, f"/m/run1/checkpoint-{s}/model.bin") == model(s)
    # a second run has nothing left to do
    again = gc.run(repo, rules)
    assert again.versions_dropped == 0 and again.packs_deleted == 0 and again.chunks_condemned == 0


def test_tag_keeps_the_tree_at_its_commit(make_repo):
    repo = make_repo(repack_below=0.99)
    commits = train(repo, save_total_limit=2, tag_after=200)  # 100 and 200 existed then
    result = gc.run(repo, retention.rules_for(repo.settings, keep_last=2))
    assert {d["path"].split("/")[3] for d in result.dropped if d["size"]} == {"checkpoint-300"}
    assert read_at(repo, "/m/run1/checkpoint-100/model.bin", commits[200]) == model(100)
    assert read_at(repo, "/m/run1/checkpoint-200/model.bin", commits[200]) == model(200)
    assert not ids(unique(300)) & stored_ids(repo)


def test_keep_best_by_metric(make_repo):
    repo = make_repo(repack_below=0.99)
    commits = train(repo, save_total_limit=1)
    rules = retention.rules_for(repo.settings, keep_best="eval_loss:2")
    result = gc.run(repo, rules)
    kept = {c["step"] for c in result.checkpoints if c["kept"]}
    assert kept == {200, 400}  # the two lowest eval_loss; 500 is current anyway
    dropped = {d["path"].split("/")[3] for d in result.dropped if d["size"]}
    assert dropped == {"checkpoint-100", "checkpoint-300"}
    for s in (200, 400):
        assert read_at(repo, f"/m/run1/checkpoint-{s}/model.bin", commits[s]) == model(s)
    assert read(repo, "/m/run1/checkpoint-500/model.bin") == model(500)
    assert not ids(unique(100)) & stored_ids(repo)
    # max: the highest metric instead
    result = gc.run(repo, retention.rules_for(repo.settings, keep_best="eval_loss:1:max"), dry_run=True)
    assert {c["step"] for c in result.checkpoints if c["kept"]} == {500}


def test_keep_within_0s_keeps_only_current_and_tagged(make_repo):
    repo = make_repo(repack_below=0.99)
    write(repo, "/notes/a.txt", content(1, 2))
    write(repo, "/notes/a.txt", content(3, 4))
    c_tag = repo.history.last_commit()
    repo.history.tag("t1", c_tag)
    write(repo, "/notes/a.txt", content(5, 6))
    write(repo, "/notes/a.txt", content(7, 8))
    repo.packs.seal_all()
    result = gc.run(repo, retention.rules_for(repo.settings, keep_within="0s"))
    assert [d["commit"] for d in result.dropped if d["size"]] != []
    assert sum(1 for d in result.dropped if d["size"]) == 2  # the first and the third; the second is tagged
    assert read(repo, "/notes/a.txt") == content(7, 8)
    assert read_at(repo, "/notes/a.txt", c_tag) == content(3, 4)
    present = stored_ids(repo)
    assert not ids((1, 2, 5, 6)) & present and ids((3, 4, 7, 8)) <= present


def test_no_rules_keeps_every_version(make_repo):
    repo = make_repo()
    write(repo, "/x/f", content(1))
    write(repo, "/x/f", content(2))
    result = gc.run(repo, None)
    assert result.versions_dropped == 0 and result.chunks_condemned == 0


def test_config_rules_per_pattern(make_repo):
    from chunkfs import config

    text = '[retention]\nrules = ["/m/* keep_last=1", "/other/* keep_within=30d"]\n'
    settings = config.parse_text(text)
    rules = retention.rules_for(settings)
    assert [r.keep_last for r in rules] == [1, None]
    with pytest.raises(Exception, match="keep_best"):
        config.parse_text('[retention]\nrules = ["/m/* keep_best=eval_loss"]\n')
    assert "rules" in config.render(settings)


def test_cli_dry_run_lists_drops_and_bytes(make_repo, repo_path):
    repo = make_repo()
    train(repo, save_total_limit=2)
    repo.close()
    cmd = ("gc", "--repo", repo_path)
    p = chunkfs(*cmd, "--dry-run", "--keep-last", "2")
    assert "would drop /m/run1/checkpoint-100/model.bin" in p.stdout
    assert "it frees" in p.stdout
    doc = cli_json(*cmd, "--dry-run", "--keep-best", "eval_loss:2")
    assert doc["dry_run"] and {c["step"] for c in doc["checkpoints"] if c["kept"]} == {200, 400}
    p = chunkfs(*cmd, "--keep-best", "eval_loss", expect=UsageError)
    assert "METRIC:N" in p.stderr


def test_a_tag_with_a_path_keeps_the_versions_under_it_only(make_repo):
    """`chunkfs tag NAME PATH` pins that subtree as of the tag's commit; before, a tag pinned the
    whole tree whatever its path. gc --json names the tag among the reasons of what it keeps."""
    repo = make_repo()
    write(repo, "/m/other/notes.bin", content(90))
    commits = train(repo, save_total_limit=1)
    tag_commit = commits[200]
    repo.history.tag("c200", tag_commit, "/m/run1/checkpoint-200")
    write(repo, "/m/other/notes.bin", content(91))  # its old version is not under the tag's path
    repo.packs.seal_all()
    result = gc.run(repo, retention.rules_for(repo.settings, keep_within="0s"), grace_s=0)
    dropped = {(d["path"], d["commit"]) for d in result.dropped}
    assert any(p == "/m/other/notes.bin" for p, _ in dropped), "a path tag does not keep other paths"
    assert read_at(repo, "/m/run1/checkpoint-200/model.bin", tag_commit) == model(200)
    reasons = {c["path"]: c["reasons"] for c in result.checkpoints}
    assert reasons["/m/run1/checkpoint-200"] == ["tag c200"] and reasons["/m/run1/checkpoint-300"] == []


def test_a_run_named_like_a_step_is_not_a_checkpoint(make_repo):
    """A run directory whose name ends in digits (run3) holding checkpoint-N directories is a run,
    as the registry says, not the checkpoint of step 3."""
    repo = make_repo()
    for step in (10, 20):
        write(repo, f"/m/run3/checkpoint-{step}/model.bin", content(step))
    result = gc.run(repo, retention.rules_for(repo.settings, keep_last=1), dry_run=True)
    assert [c["path"] for c in result.checkpoints] == ["/m/run3/checkpoint-10", "/m/run3/checkpoint-20"]
    assert [c["kept"] for c in result.checkpoints] == [False, True], "keep_last=1 counts within run3"
