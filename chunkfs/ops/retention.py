"""Retention: which versions gc keeps (docs/gc.md, "Policies").

A *rule* applies to the paths its pattern matches (``fnmatch``; ``*`` also
matches ``/``; the first matching rule wins) and says what to keep:

- ``keep_last=N``      the N checkpoints with the highest steps of each run,
- ``keep_every=K``     every checkpoint whose step is a multiple of K,
- ``keep_best=M:N[:min|max]`` the N checkpoints of each run with the best metric M
  (default ``min``); the metric comes from the checkpoint's registry record or,
  for a checkpoint already removed from the tree, from its last trainer_state.json
  (or other sidecar) version,
- ``keep_within=D``    every version (and checkpoint) committed less than D ago.

A *checkpoint* is a directory whose name is a step (``registry.step_pattern``)
and that has no checkpoint below it (``run3`` holding ``checkpoint-N`` is a run),
found in the history, so a checkpoint that the trainer already rotated away
still counts; a checkpoint's *run* is its parent directory. A file version
inside a checkpoint is kept when the checkpoint is kept (by any criterion of
its rule) or by ``keep_within``; a version outside any checkpoint is kept when
its rule has no ``keep_within`` (checkpoint criteria do not speak of it) or
``keep_within`` keeps it.

Always kept, whatever the rules: the current version of every inode (the
current tree, files still open included), for each tag the version at its
commit of every file that was under its path then (the whole tree for a tag
without one; the checkpoints it keeps say so: "tag NAME"), every version of a path no rule matches, and every version of a
directory or symlink (they hold no chunks). With no rule at all, gc keeps
every version and only reclaims what nothing references.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
import stat
from collections import defaultdict
from dataclasses import dataclass, field

from chunkfs.config import parse_duration, parse_keep_best, parse_retention_rule, positive_count
from chunkfs.errors import ChunkfsError, ConfigError, UsageError
from chunkfs.index import Txn
from chunkfs.namespace.paths import Paths
from chunkfs.namespace.registry.keypath import step_of
from chunkfs.namespace.registry.sidecars import SIDECARS, extract_sidecar
from chunkfs.types import ROOT_INODE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    pattern: str = "*"
    keep_last: int | None = None
    keep_every: int | None = None
    keep_best: tuple[str, int, str] | None = None  # (metric, n, "min" | "max")
    keep_within: int | None = None  # seconds

    def matches(self, path: str) -> bool:
        return fnmatch.fnmatchcase(path, self.pattern)

    @property
    def by_checkpoint(self) -> bool:
        return self.keep_last is not None or self.keep_every is not None or self.keep_best is not None

    def describe(self) -> str:
        parts = [self.pattern]
        if self.keep_last is not None:
            parts.append(f"keep_last={self.keep_last}")
        if self.keep_every is not None:
            parts.append(f"keep_every={self.keep_every}")
        if self.keep_best is not None:
            parts.append("keep_best=" + ":".join(map(str, self.keep_best)))
        if self.keep_within is not None:
            parts.append(f"keep_within={self.keep_within}s")
        return " ".join(parts)


def parse_rule(text: str) -> Rule:
    """``"/llama/* keep_last=2 keep_best=eval_loss:3 keep_within=7d"`` → a ``Rule`` (ValueError)."""
    return Rule(**parse_retention_rule(text))


def rules_for(settings, *, keep_last: int | None = None, keep_within: str | None = None,
              keep_best: str | None = None, keep_every: int | None = None) -> list[Rule] | None:
    """The rules of one gc run: the flags (one rule for every path) when any is given, else the
    configured ``[retention] rules``; None when there are none (keep every version)."""
    if any(v is not None for v in (keep_last, keep_within, keep_best, keep_every)):
        try:
            rule = Rule(
                "*",
                keep_last=None if keep_last is None else positive_count("--keep-last", str(keep_last)),
                keep_every=None if keep_every is None else positive_count("--keep-every", str(keep_every)),
                keep_best=None if keep_best is None else parse_keep_best(keep_best),
                keep_within=None if keep_within is None else parse_duration(keep_within),
            )
        except ValueError as e:
            raise UsageError(str(e)) from None
        return [rule]
    try:
        rules = [parse_rule(r) for r in settings.retention.rules]
    except ValueError as e:
        raise ConfigError(f"chunkfs.toml: retention.rules: {e}") from None
    return rules or None


# -- evaluation ---------------------------------------------------------------------------


@dataclass
class CheckpointDecision:
    ino: int
    path: str
    run: str
    step: int
    time_ns: int
    metric: float | None = None
    current: bool = False
    reasons: list[str] = field(default_factory=list)  # empty: not kept by its rule

    @property
    def kept(self) -> bool:
        return bool(self.reasons)


@dataclass
class DroppedVersion:
    ino: int
    commit: int
    path: str
    size: int
    manifest: int
    time_ns: int


@dataclass
class Plan:
    """What retention keeps: every version not in ``drop`` stays."""

    drop: list[DroppedVersion] = field(default_factory=list)
    kept_versions: int = 0
    checkpoints: list[CheckpointDecision] = field(default_factory=list)
    rules: list[Rule] | None = None
    tags: set[str] = field(default_factory=set)  # the tags this plan applied (gc re-checks newer ones)


def evaluate(repo, rules: list[Rule] | None, now_ns: int, t: Txn) -> Plan:
    """Decide, inside transaction ``t``, which file versions retention drops."""
    plan = Plan(rules=rules)
    versions = list(t.inohist_all())
    if rules is None:
        plan.kept_versions = len(versions)
        return plan
    paths = Paths(t)
    pattern = re.compile(repo.settings.registry.step_pattern)
    by_ino: dict[int, list] = defaultdict(list)
    for v in versions:
        by_ino[v.ino].append(v)
    for vs in by_ino.values():
        vs.sort(key=lambda v: v.commit, reverse=True)

    keep: set[tuple[int, int]] = set()
    # the current tree: the newest version of every inode that still exists
    for ino, vs in by_ino.items():
        if t.inode_get(ino) is not None:
            keep.add((ino, vs[0].commit))
    # tags: the version as of the tag's commit of each inode in the tree under the tag's path then
    tagged: dict[str, set[int]] = {}
    for name, commit, _created, tag_path in t.tags():
        plan.tags.add(name)
        tagged[name] = _tree_at(t, tag_path or "/", commit)
        for ino in tagged[name]:
            at = next((v for v in by_ino.get(ino, ()) if v.commit <= commit), None)
            if at is not None:
                keep.add((ino, at.commit))

    # checkpoints, from the history
    ckpts: dict[int, CheckpointDecision] = {}
    for ino, vs in by_ino.items():
        if not stat.S_ISDIR(vs[0].record.mode) or ino == ROOT_INODE or ino not in paths.link:
            continue
        p = paths.path(ino)
        name = p.rsplit("/", 1)[-1]
        step = step_of(name, pattern)
        if step is None:
            continue
        run = p.rsplit("/", 1)[0] or "/"
        current = t.inode_get(ino) is not None
        ckpts[ino] = CheckpointDecision(ino, p, run, step, vs[-1].record.ctime_ns or 0, current=current)
    for c in list(ckpts.values()):  # a step-named directory with checkpoints below it is a level above
        cur, depth = paths.parent(c.ino), 0  # them (a run called run3), not a checkpoint (docs/registry.md)
        while cur is not None and cur != ROOT_INODE and depth < 4096:
            ckpts.pop(cur, None)
            cur, depth = paths.parent(cur), depth + 1
    for c in ckpts.values():
        c.time_ns = t.commit_time(by_ino[c.ino][-1].commit) or c.time_ns
        c.reasons += [f"tag {name}" for name, members in tagged.items() if c.ino in members]
    runs: dict[str, list[CheckpointDecision]] = defaultdict(list)
    for c in ckpts.values():
        runs[c.run].append(c)
    for run_ckpts in runs.values():
        for c in run_ckpts:
            rule = _rule_for(rules, c.path)
            if rule is None:
                c.reasons.append("no rule")
                continue
            if rule.keep_within is not None and c.time_ns >= now_ns - rule.keep_within * 1_000_000_000:
                c.reasons.append("keep_within")
        ruled: dict[Rule, list[CheckpointDecision]] = defaultdict(list)
        for c in run_ckpts:
            rule = _rule_for(rules, c.path)
            if rule is not None:
                ruled[rule].append(c)
        for rule, group in ruled.items():
            if rule.keep_last is not None:
                for c in sorted(group, key=lambda c: c.step, reverse=True)[: rule.keep_last]:
                    c.reasons.append("keep_last")
            if rule.keep_every is not None:
                for c in group:
                    if c.step % rule.keep_every == 0:
                        c.reasons.append("keep_every")
            if rule.keep_best is not None:
                metric, n, order = rule.keep_best
                for c in group:
                    c.metric = _metric(repo, t, paths, by_ino, c, metric)
                rated = [c for c in group if c.metric is not None]
                rated.sort(key=lambda c: (c.metric if order == "min" else -c.metric, -c.step))
                for c in rated[:n]:
                    c.reasons.append(f"keep_best {metric}")
    plan.checkpoints = sorted(ckpts.values(), key=lambda c: (c.run, c.step))

    # every file version: kept by the rules, or dropped
    for ino, vs in by_ino.items():
        if not stat.S_ISREG(vs[0].record.mode):
            continue
        path = paths.path(ino) if ino in paths.link else f"/.orphan-{ino}"
        rule = _rule_for(rules, path)
        ckpt = _checkpoint_of(paths, ckpts, ino)
        for v in vs:
            if (ino, v.commit) in keep or rule is None:
                continue
            time_ns = t.commit_time(v.commit) or 0
            if rule.keep_within is not None and time_ns >= now_ns - rule.keep_within * 1_000_000_000:
                continue
            if ckpt is not None and ckpt.kept:
                continue
            if ckpt is None and rule.keep_within is None:
                continue  # checkpoint criteria say nothing of files outside checkpoints
            if ckpt is not None and not rule.by_checkpoint and rule.keep_within is None:
                continue
            plan.drop.append(DroppedVersion(ino, v.commit, path, v.record.size, v.record.manifest, time_ns))
    plan.kept_versions = len(versions) - len(plan.drop)
    return plan


def _tree_at(t: Txn, path: str, commit: int) -> set[int]:
    """The inodes of the tree under ``path`` (it included) as it was at ``commit``."""
    ino = ROOT_INODE
    for name in (p for p in path.strip("/").split("/") if p):
        ino = t.dirent_at(ino, name.encode("utf-8", "surrogateescape"), commit)
        if ino is None:
            return set()
    found, todo = {ino}, [ino]
    while todo:
        for _name, child in t.dirents_at(todo.pop(), commit):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _rule_for(rules: list[Rule], path: str) -> Rule | None:
    return next((r for r in rules if r.matches(path)), None)


def _checkpoint_of(paths: Paths, ckpts: dict[int, CheckpointDecision], ino: int) -> CheckpointDecision | None:
    cur = paths.parent(ino)
    depth = 0
    while cur is not None and cur != ROOT_INODE and depth < 4096:
        if cur in ckpts:
            return ckpts[cur]
        cur = paths.parent(cur)
        depth += 1
    return None


def _metric(repo, t: Txn, paths: Paths, by_ino, c: CheckpointDecision, metric: str) -> float | None:
    """The checkpoint's value of ``metric``: its registry record, else its newest sidecar version."""
    from chunkfs.namespace.registry.checkpoint import metric_value

    got = t.ckpt_get(c.ino)
    if got is not None:
        value = metric_value(got.doc, metric)
        if value is not None:
            return value
    found: dict = {}
    for name in SIDECARS:  # in order of precedence: a later file's key wins
        child = next((ch for n, ch in paths.children.get(c.ino, ()) if n == name.encode()), None)
        if child is None or child not in by_ino:
            continue
        newest = by_ino[child][0]
        extents = t.manifest_get(newest.record.manifest) if newest.record.manifest else []
        if not extents or newest.record.size > (16 << 20):
            continue
        try:
            data = bytes(repo.content_of(extents).read(0, newest.record.size))
            out, _problems = extract_sidecar(name, data)
        except (ChunkfsError, ValueError) as e:  # an unreadable sidecar only means "no metric"
            log.info("%s: no %s from %s: %s", c.path, metric, name, e)
            continue
        found.update(out)
    v = found.get(metric)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v):
        return float(v)
    return None
