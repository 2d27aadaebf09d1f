"""Tier commands: tier, tier move, run complete, thaw, sync, status, prefetch, unpin.

They work the same whether or not the repository is mounted (docs/tiers.md,
"Who does what"): they open it read-only, moves take the tier lock, and sync
lets a running mount's uploader do the uploading.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from chunkfs.cli import output, paths
from chunkfs.errors import Conflict, UsageError
from chunkfs.ops import prefetch as prefetchop
from chunkfs.ops import status as statusop
from chunkfs.ops import tier as tierop
from chunkfs.repo import Repository
from chunkfs.types import parse_tier

TIERS = ("hot", "warm", "cold")


def register(sub, repo_argument) -> None:
    p = sub.add_parser(
        "tier",
        help="apply the tier policies, or move a run by hand",
        description="Apply the lifecycle policies of chunkfs.toml: complete runs move from hot to warm "
        "(re-encoded smaller at lifecycle.warm_level), old and unread runs from warm to cold (repacked, "
        "recompressed at cold_level). `tier move PATH --to TIER` moves one run (or every run under PATH) by "
        "hand. Safe to interrupt: a rerun finishes or undoes it. Re-encoding costs CPU: on a busy node run "
        "it as `nice chunkfs tier` (a mount does it at the lowest priority itself). In a shared repository "
        "re-encodings run on one node at a time: this fails, naming the node, while another holds the "
        "cluster's maintenance lease (its gc, backup or tier mover).",
    )
    repo_argument(p)
    p.add_argument("--dry-run", action="store_true", help="show what would move, move nothing")
    p.add_argument("--check", action="store_true", help="check that every pack is where the index says")
    output.json_argument(p, "the plan or the result")
    p.set_defaults(handler=cmd_tier)
    tsub = p.add_subparsers(dest="tier_action", metavar="ACTION")
    m = tsub.add_parser("move", help="move the runs under PATH to a tier", description="Move every sealed "
                        "pack of the runs under PATH to TIER. Moving to hot keeps them there until "
                        "`chunkfs run complete PATH`.")  # fmt: skip
    repo_argument(m)
    m.add_argument("path", metavar="PATH", help="run directory in a mount, or a repository path with --repo")
    m.add_argument("--to", required=True, choices=TIERS, help="destination tier")
    output.json_argument(m)
    m.set_defaults(handler=cmd_tier_move)

    p = sub.add_parser("run", help="run lifecycle", description="Run lifecycle actions.")
    rsub = p.add_subparsers(dest="run_action", metavar="ACTION", required=True)
    c = rsub.add_parser(
        "complete",
        help="mark a run complete",
        description="Mark the run at PATH (or every run under it) complete: the next `chunkfs tier` moves "
        "its packs off the hot tier.",
    )
    repo_argument(c)
    c.add_argument("path", metavar="PATH")
    output.json_argument(c, "the runs marked")
    c.set_defaults(handler=cmd_run_complete)

    p = sub.add_parser(
        "thaw",
        help="restore runs from the cold tier",
        description="Bring the cold packs of the runs under PATH back to the warm tier (hot without one), "
        "restoring them from an archive storage class first where needed.",
    )
    repo_argument(p)
    p.add_argument("path", metavar="PATH")
    p.add_argument("--wait", type=float, metavar="SECONDS", help="give up waiting for archive restores after this")
    output.json_argument(p)
    p.set_defaults(handler=cmd_thaw)

    p = sub.add_parser(
        "sync",
        help="wait until every sealed pack is on the warm tier",
        description="Upload the write-back queue to the warm tier and return once it is empty. With the "
        "repository mounted, the mount's uploader does it and this waits. In a repository shared by several "
        "nodes it also waits until this node's changes are published to the shared log, and applies the "
        "other nodes' (docs/multinode.md).",
    )
    repo_argument(p)
    p.add_argument("path", metavar="PATH", nargs="?", help="a path in a mount (instead of --repo)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="fail if the queue is not empty by then")
    output.json_argument(p)
    p.set_defaults(handler=cmd_sync)

    p = sub.add_parser(
        "status",
        help="tiers, upload backlog, read cache, activity",
        description="Show bytes per tier, the upload backlog (packs, bytes, oldest), the read cache, pins "
        "and the activity counters (the figures the metrics endpoint serves).",
    )
    repo_argument(p)
    p.add_argument("path", metavar="PATH", nargs="?", help="a path in a mount (instead of --repo)")
    output.json_argument(p, "the figures")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser(
        "prefetch",
        help="stage a file or tree on the local disk",
        description="Fetch every chunk of the files under PATH that is on the warm or cold tier into the "
        "local read cache. --pin keeps them there (never evicted) until `chunkfs unpin PATH`.",
    )
    repo_argument(p)
    p.add_argument("path", metavar="PATH")
    p.add_argument("--pin", action="store_true", help="never evict these chunks from the cache")
    output.json_argument(p)
    p.set_defaults(handler=cmd_prefetch)

    p = sub.add_parser("unpin", help="let pinned data be evicted again", description="Remove the pin of PATH.")
    repo_argument(p)
    p.add_argument("path", metavar="PATH", nargs="?")
    p.add_argument("--list", action="store_true", help="list the pinned paths")
    output.json_argument(p)
    p.set_defaults(handler=cmd_unpin)


def _repo_dir(args) -> Path:
    """The repository of a command whose PATH is optional: the PATH's, else ``paths.repository``."""
    if getattr(args, "path", None):
        return paths.resolve(args.path, args.repo)[0]
    return paths.repository(args.repo)


def _open(args) -> tuple[Repository, str]:
    repo_dir, repo_path = paths.resolve(args.path, args.repo)
    return Repository(repo_dir, writable=False), repo_path


def _time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).astimezone().isoformat(timespec="seconds")


def _print_outcome(args, outcome, extra: dict | None = None, waiting: str = "") -> int:
    result = {
        "moved": outcome.moved,
        "written": outcome.written,  # per tier: the new packs of re-encoding repacks
        "cold_packs_written": outcome.written.get("cold", {}).get("packs", 0),  # before "written" existed
        "cold_bytes_written": outcome.written.get("cold", {}).get("bytes", 0),
        "errors": outcome.errors,
        "waiting": waiting,
        **(extra or {}),
    }
    if args.json:
        output.print_json(result)
    else:
        if not outcome.moved:
            output.out.print(f"nothing to move now; {waiting}" if waiting else "nothing to move", markup=False)
        for key, row in sorted(outcome.moved.items()):
            output.out.print(f"{key:10} {row['packs']:6} packs  {output.human_bytes(row['bytes'])}")
        for tier, row in sorted(outcome.written.items()):
            deltas = f" ({row['deltas']} chunks as deltas of newer checkpoints)" if row["deltas"] else ""
            output.out.print(f"{tier} tier: re-encoded into {row['packs']} packs, {output.human_bytes(row['bytes'])}{deltas}")
        for problem in outcome.errors:
            output.error(problem)
    return 1 if outcome.errors else 0


def cmd_tier(args) -> int:
    with Repository(_repo_dir(args), writable=False) as repo:
        if args.check:
            problems = repo.tiers.audit()
            if args.json:
                output.print_json({"problems": problems})
            else:
                for problem in problems:
                    output.error(problem)
                if not problems:
                    output.out.print("every pack is where the index says")
            return 1 if problems else 0
        actions = tierop.plan(repo)
        waiting = tierop.open_packs(repo).describe()
        if args.dry_run:
            if args.json:
                output.print_json({"dry_run": True, "actions": [a.as_dict() for a in actions], "waiting": waiting})
            elif not actions:
                output.out.print(f"nothing to move now; {waiting}" if waiting else "nothing to move", markup=False)
            else:
                output.print_rows(
                    ("run", "move", "packs", "bytes", "why"),
                    [(a.run, a.describe(), str(len(a.packs)), output.human_bytes(a.bytes), a.reason) for a in actions],
                )  # fmt: skip
            return 0
        with output.progress("tier", sum(a.bytes for a in actions)) as bar:
            outcome = tierop.apply(repo, actions, bar)
    return _print_outcome(args, outcome, {"actions": [a.as_dict() for a in actions]}, waiting)


def cmd_tier_move(args) -> int:
    repo, path = _open(args)
    with repo, output.progress(f"move {path} to {args.to}", None) as bar:
        outcome = tierop.move(repo, path, parse_tier(args.to), bar)
    return _print_outcome(args, outcome, {"path": path, "to": args.to})


def cmd_run_complete(args) -> int:
    repo_dir, path = paths.resolve(args.path, args.repo)
    try:  # holding the repository (nothing mounted), it seals the runs' open packs itself
        repo = Repository(repo_dir, writable=True)
    except Conflict:  # the mount does, at once
        repo = Repository(repo_dir, writable=False)
    with repo:
        runs = tierop.complete(repo, path)
    if args.json:
        output.print_json({"complete": runs})
    else:
        for run in runs:
            output.out.print(f"run {run} marked complete", markup=False, highlight=False)
    return 0


def cmd_thaw(args) -> int:
    repo, path = _open(args)
    with repo, output.progress(f"thaw {path}", None) as bar:
        result = tierop.thaw(repo, path, bar, wait_s=args.wait)
    if args.json:
        output.print_json(vars(result))
    elif result.packs:
        output.out.print(f"thawed {result.packs} packs ({output.human_bytes(result.bytes)}) to the {result.to} tier")
    else:
        output.out.print(f"nothing of {path} is on the cold tier")
    return 0


def cmd_sync(args) -> int:
    repo_dir = _repo_dir(args)
    with output.progress("upload", None) as bar:
        result = tierop.sync(repo_dir, bar, timeout=args.timeout, notice=lambda m: output.err.print(f"chunkfs: {m}"))
    if args.json:
        output.print_json(vars(result))
    else:
        who = "by the mount" if result.by_daemon else f"{output.human_bytes(result.uploaded_bytes)} uploaded"
        output.out.print(f"every sealed pack is on the warm tier ({who})")
        if result.published:
            output.out.print(f"{result.published} changes published to the shared log")
        if result.waiting:
            output.out.print(f"but {result.waiting}", markup=False)
    return 0


def cmd_status(args) -> int:
    with Repository(_repo_dir(args), writable=False) as repo:
        s = statusop.status(repo)
    if args.json:
        output.print_json(s.as_dict())
        return 0
    h = output.human_bytes
    a = s.activity
    rows = [("writer", f"{s.writer} (mounted or importing)" if s.writer else "none")]
    for tier, u in s.tiers.items():
        if u.configured:
            copies = f", +{u.copies} copies {h(u.copy_bytes)}" if u.copies else ""
            rows.append((f"{tier} tier", f"{h(u.bytes)} in {u.packs} packs{copies}  ({u.location})"))
    b = s.upload_backlog
    rows.append(("upload backlog", f"{b['packs']} packs, {h(b['bytes'])}, oldest {b['oldest_age_s']:.0f}s"))
    if s.open_packs.get("packs"):
        rows.append(("not sealed yet", s.open_packs["why"]))
    if s.upload_error:
        rows.append(("upload error", s.upload_error))
    if s.moves_in_flight:
        rows.append(("unfinished moves", f"{s.moves_in_flight} (run `chunkfs tier`)"))
    if s.cluster:
        k = s.cluster
        rows.append(("shared", f"node {k['node']} of {k['url']}, log applied to entry {k['applied']}"))
        why = f" ({k['waiting']})" if k["waiting"] and k["pending_changes"] else ""
        rows.append(("not published", f"{k['pending_changes']} changes, oldest {k['oldest_pending_s']:.0f}s{why}"))
        if k["error"]:
            rows.append(("shared log error", k["error"]))
        if k["retiring_packs"]:
            rows.append(("retiring", f"{k['retiring_packs']} re-encoded packs kept on warm until every node relocated"))
        j = k.get("join_point")
        rows.append(("joins start", f"after log entry {j['position']} (a metadata backup {j['age_s']:.0f}s old)"
                     if j else "at the log's first entry (no metadata backup to start from)"))  # fmt: skip
        for node, m in sorted(k["members"].items()):
            if "error" in m:
                rows.append((f"  node {node}", m["error"]))
                continue
            lag = f", waiting: {m['waiting']}" if m.get("waiting") else ""
            if m.get("gc"):
                lag += f", gc entry {m['gc']['round']} {'ready' if m['gc']['ready'] else 'not ready'}"
            text = (
                f"{m.get('host')}: applied {m.get('applied')}, {m.get('pending_changes')} unpublished "
                f"(oldest {m.get('oldest_pending_s', 0):.0f}s), heartbeat {m.get('heartbeat_age_s', 0):.0f}s ago{lag}"
            )
            rows.append((f"  node {node}", text))
    c = s.read_cache
    rows.append(("read cache", f"{h(c['bytes'])} of {h(c['limit'])} ({c['chunks']} chunks, {s.pins} pins)"))
    rows.append(("written", f"{h(a.get('written_bytes', 0))} (deduplicated {h(a.get('dedup_bytes', 0))})"))
    rows.append(("chunks", f"{a.get('new_chunks', 0)} new, {a.get('reused_chunks', 0)} reused"))
    rows.append(("read", f"{h(a.get('read_bytes', 0))}"))
    rows.append(("cache hits/misses", f"{a.get('read_cache_hits', 0)}/{a.get('read_cache_misses', 0)}"))
    rows.append(("uploaded", f"{a.get('uploaded_packs', 0)} packs, {h(a.get('uploaded_bytes', 0))}"))
    for key in sorted(a):
        if key.startswith("moved_packs_"):
            src, dst = key.removeprefix("moved_packs_").split("_")
            moved = a.get(f"moved_bytes_{src}_{dst}", 0)
            rows.append((f"moved {src}→{dst}", f"{a[key]} packs, {h(moved)}"))
    if s.replication:
        r = s.replication
        lag = f"{r['packs']} packs, {h(r['bytes'])} behind, oldest {r['oldest_age_s']:.0f}s"
        rows.append(("replication lag", lag + (f" ({r['error']})" if r.get("error") else "")))
    if s.last_backup:
        rows.append(("metadata backup", f"generation {s.last_backup['generation']}, {s.last_backup['age_s']:.0f}s ago"))
    output.print_table(f"chunkfs {s.repository}", rows)
    return 0


def cmd_prefetch(args) -> int:
    repo, path = _open(args)
    with repo, output.progress(f"prefetch {path}", None) as bar:
        result = prefetchop.prefetch(repo, path, pin=args.pin, progress=bar)
    if args.json:
        output.print_json(vars(result))
    else:
        pinned = ", pinned" if result.pinned else ""
        output.out.print(
            f"{path}: {result.files} files, {output.human_bytes(result.bytes)} local "
            f"({output.human_bytes(result.fetched_bytes)} fetched now{pinned})",
            markup=False, highlight=False,
        )  # fmt: skip
    return 0


def cmd_unpin(args) -> int:
    if args.list:
        with Repository(_repo_dir(args), writable=False) as repo:
            pins = prefetchop.pins(repo)
        if args.json:
            output.print_json([{"path": p, "pinned": _time(ns), "chunks": n} for p, ns, n in pins])
        else:
            output.print_rows(("path", "pinned", "chunks"), [(p, _time(ns), str(n)) for p, ns, n in pins])
        return 0
    if not args.path:
        raise UsageError("give the PATH to unpin, or --list")
    repo, path = _open(args)
    with repo:
        prefetchop.unpin(repo, path)
    if args.json:
        output.print_json({"unpinned": path})
    else:
        output.out.print(f"unpinned {path}", markup=False, highlight=False)
    return 0
