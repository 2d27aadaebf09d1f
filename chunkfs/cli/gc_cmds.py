"""``chunkfs gc``: retention and garbage collection (docs/gc.md).

Works the same whether or not the repository is mounted: it opens the
repository read-only (the mount keeps the write lock) and coordinates with
writers through the index (the condemn/resurrect/lease protocol). A shared
repository's gc without a mount opens it as the maintainer, to apply the log.
"""

from __future__ import annotations

from chunkfs.cli import output, paths
from chunkfs.ops import gc as gcop
from chunkfs.ops import retention


def register(sub, repo_argument) -> None:
    p = sub.add_parser(
        "gc",
        help="drop versions no retention rule keeps and reclaim unused space",
        description="Apply the retention rules of chunkfs.toml ([retention] rules; or the --keep-* flags, "
        "which replace them for this run), drop the versions they do not keep (never the current tree or "
        "tagged versions), then delete packs that hold no live chunk and repack mostly-dead ones on every "
        "tier. Safe while the mount writes, and safe to kill: a rerun finishes the job.",
        epilog="Getting space back while training writes: delete the checkpoints (or let the rules drop "
        "them) and run `chunkfs gc` twice, a little apart: the first run takes the unreferenced chunks out "
        "of use, the next deletes their bytes once every file that was being written meanwhile has been "
        "closed (and after gc.grace; `--grace 0s` to skip it). The mount seals its open packs when gc asks, "
        "so their dead bytes come back too. A pack is rewritten when less than gc.repack_below of it is "
        "live (--repack-below 1: whatever is dead); while the hot disk has less than lifecycle.hot_min_free "
        "free, hot packs with 5% or more dead bytes are. `--json` shows what waits and why (leases). In a "
        "repository shared by several nodes, one gc runs at a time across them (a lease in the bucket): it "
        "publishes what its node no longer needs, every node applies that, and once every node says it is "
        "ready (up to a minute) a sweep follows; each node deletes its own emptied packs. No repacks there "
        "(docs/multinode.md).",
    )
    repo_argument(p)
    p.add_argument("--dry-run", action="store_true", help="list what would be dropped and freed")
    output.json_argument(p)
    add = p.add_argument
    add("--keep-last", type=int, metavar="N", help="keep the last N checkpoints of each run")
    add("--keep-every", type=int, metavar="K", help="keep every checkpoint whose step is a multiple of K")
    add("--keep-best", metavar="METRIC:N[:min|max]", help="keep each run's N best checkpoints by METRIC")
    add("--keep-within", metavar="DURATION", help='keep every version newer than DURATION ("7d", "0s")')
    add("--grace", metavar="DURATION", help="override gc.grace for this run (e.g. 0s in tests)")
    add("--repack-below", type=float, metavar="FRACTION", help="override gc.repack_below for this run")
    p.set_defaults(handler=cmd_gc)


def cmd_gc(args) -> int:
    from chunkfs.config import parse_duration
    from chunkfs.errors import UsageError

    with gcop.open_repository(paths.repository(args.repo), dry_run=args.dry_run) as repo:
        rules = retention.rules_for(
            repo.settings, keep_last=args.keep_last, keep_within=args.keep_within,
            keep_best=args.keep_best, keep_every=args.keep_every,
        )  # fmt: skip
        try:
            grace = parse_duration(args.grace) if args.grace is not None else None
        except ValueError as e:
            raise UsageError(f"--grace: {e}") from None
        if args.repack_below is not None and not 0.0 <= args.repack_below <= 1.0:
            raise UsageError("--repack-below: must be between 0 and 1")
        with output.progress("gc: repacking", None) as bar:
            result = gcop.run(repo, rules, dry_run=args.dry_run, grace_s=grace,
                              repack_below=args.repack_below, progress=bar)  # fmt: skip
    if args.json:
        output.print_json(result.to_json())
        return 0
    _print(result)
    return 0


def _print(r: gcop.GcResult) -> None:
    verb = "would drop" if r.dry_run else "dropped"
    if r.rules is None:
        output.out.print("no retention rules: every version is kept; reclaiming unreferenced space only")
    for d in r.dropped:
        output.out.print(f"{verb} {d['path']} @{d['commit']} ({output.human_bytes(d['size'])})", markup=False)
    rows = [
        ("versions " + ("to drop" if r.dry_run else "dropped"), str(r.versions_dropped)),
        ("versions kept", str(r.versions_kept)),
        ("chunks live", str(r.chunks_live)),
        ("chunks " + ("to condemn" if r.dry_run else "condemned"), str(r.chunks_condemned)),
        ("bytes " + ("it frees" if r.dry_run else "unreferenced"), output.human_bytes(r.bytes_freeable)),
    ]
    if r.dry_run:
        rows += [
            ("packs to delete now", str(len(r.planned_deletes))),
            ("packs to repack now", str(len(r.planned_repacks))),
        ]
    else:
        rows += [
            ("chunks swept", str(r.chunks_swept)),
            ("chunks waiting (writers / grace)", str(r.chunks_waiting)),
            ("packs deleted", str(r.packs_deleted)),
            ("packs repacked", f"{r.packs_repacked} → {r.packs_written}"),
            ("orphans reclaimed", str(r.orphans)),
            ("bytes freed", output.human_bytes(r.bytes_freed)),
        ]
    for what, position in (("gc entry", r.cluster.get("gc_entry")), ("sweep entry", r.cluster.get("sweep_entry"))):
        if position:
            rows.append((f"shared log: {what}", f"{position} (every node applies it)"))
    for why in r.cluster.get("waiting_for", []):
        rows.append(("sweep waits for", why))
    output.print_table("gc (dry run)" if r.dry_run else "gc", rows)
