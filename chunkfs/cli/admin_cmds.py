"""Admin commands for integrity and disaster recovery: fsck, drill, backup, replicate, recover.

docs/operations.md is the runbook that says when to run which.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from chunkfs.cli import output, paths
from chunkfs.errors import CorruptData, UsageError
from chunkfs.ops import drill as drillop
from chunkfs.ops import fsck as fsckop
from chunkfs.ops import recover as recoverop
from chunkfs.repo import Repository


def register(sub, repo_argument) -> None:
    p = sub.add_parser(
        "fsck",
        help="check that every retained version's chunks exist and hash right",
        description="Check every chunk referenced by every retained version (reading packs on every tier), "
        "that the index and the pack footers agree, and name the files and versions affected by any damage. "
        "--repair re-fetches damaged or missing chunks from a replica and rebuilds index entries from pack "
        "footers (the repository must not be mounted).",
    )
    repo_argument(p)
    p.add_argument("--repair", action="store_true", help="repair what can be repaired")
    p.add_argument("--sample", type=float, default=1.0, metavar="FRACTION",
                   help="hash-check only this random fraction of the chunks (footers are always checked)")  # fmt: skip
    output.json_argument(p, "the report")
    p.set_defaults(handler=cmd_fsck)

    p = sub.add_parser(
        "drill",
        help="restore a version from one tier into a scratch directory and verify it",
        description="Restore PATH as of a version reading only from the named source (no cache, no other tier), "
        "verify every file against the BLAKE3 recorded at commit, optionally run a check command on it, and "
        "record the result. `chunkfs drill --history` lists past drills.",
    )
    repo_argument(p)
    p.add_argument("path", metavar="PATH", nargs="?", help="file or directory in a mount, or a repository path with --repo")
    p.add_argument("--at", metavar="VERSION", help="commit number, tag or ISO time (default: the newest commit)")
    p.add_argument("--from", dest="source", choices=drillop.SOURCES,
                   help="where to read from (default: warm, else cold, else hot: the first tier configured)")
    p.add_argument("--check-cmd", metavar="CMD", help="run CMD with the restored checkpoint (the directory or "
                   "file PATH names) as last argument and $CHUNKFS_DRILL_DIR; a non-zero exit fails the drill")  # fmt: skip
    p.add_argument("--scratch", metavar="DIR", help="restore under DIR (default: a new temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the restored files")
    p.add_argument("--history", action="store_true", help="list past drills instead")
    output.json_argument(p)
    p.set_defaults(handler=cmd_drill)

    p = sub.add_parser(
        "backup",
        help="back up the index to the warm tier and replicas now (and replicate pending packs)",
        description="Copy pending packs to the replicas, then upload a consistent metadata backup. A mount does "
        "both in the background (replication.interval, backup.interval). In a repository shared by several "
        "nodes any member backs up, one at a time, once its changes are published (docs/multinode.md).",
    )
    repo_argument(p)
    output.json_argument(p)
    p.set_defaults(handler=cmd_backup)

    p = sub.add_parser(
        "recover",
        help="rebuild a repository from the object store alone",
        description="Rebuild a mountable repository in NEWREPO from the newest metadata backup at URL (the warm "
        "tier or a replica) plus the footers of every pack written after it. Versions committed after that "
        "backup are lost.",
    )
    p.add_argument("newrepo", metavar="NEWREPO", help="new (or empty) directory for the repository")
    p.add_argument("--from", dest="from_url", required=True, metavar="URL", help="s3://bucket/prefix or a directory")
    p.add_argument("--endpoint-url", metavar="URL", help="S3 endpoint (MinIO, Ceph, a replica's endpoint)")
    p.add_argument("--verify", action="store_true", help="run a full fsck on the result")
    output.json_argument(p)
    p.set_defaults(handler=cmd_recover)


DAMAGE = CorruptData.exit_code
"""The exit code of a check that found damage (fsck, drill, recover --verify): the one of CorruptData."""


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def cmd_fsck(args) -> int:
    if not 0.0 < args.sample <= 1.0:
        raise UsageError("--sample: a fraction between 0 (exclusive) and 1")
    with (
        Repository(paths.repository(args.repo), writable=args.repair) as repo,
        output.progress("fsck", None, unit="packs") as bar,
    ):
        report = fsckop.fsck(repo, repair=args.repair, sample=args.sample, progress=bar)
    if args.json:
        output.print_json(report.as_dict())
        return 0 if report.ok else DAMAGE
    o = output.out
    o.print(f"checked {_n(report.versions, 'version')}, {_n(report.chunks_referenced, 'chunk')} referenced, "
            f"{report.chunks_checked} hashed, {_n(report.packs_checked, 'pack')}, "
            f"{output.human_bytes(report.bytes_read)} read in {report.seconds:.1f}s", markup=False)  # fmt: skip
    for p in report.problems:
        o.print(f"{'REPAIRED' if p.repaired else 'PROBLEM'}  {p.kind}: {p.message}", markup=False, highlight=False)
    if report.affected:
        o.print("affected files:", markup=False)
        for a in report.affected:
            which = ", ".join([f"commit {c}" for c in a.commits] + (["current"] if a.current else []))
            state = "repaired" if a.repaired and args.repair else _n(a.chunks, "damaged chunk")
            o.print(f"  {a.path}  ({which}; {state})", markup=False, highlight=False)
    if args.repair:
        o.print(f"repaired {report.repaired_chunks} chunks from replicas, re-indexed {report.reindexed_chunks} "
                f"from pack footers, dropped {len(report.dropped_packs)} damaged packs", markup=False)  # fmt: skip
    if report.ok:
        o.print("ok" if not report.problems else "ok (everything repaired)")
        return 0
    output.error(f"{_n(sum(not p.repaired for p in report.problems), 'problem')} found"
                 + ("" if args.repair else "; `chunkfs fsck --repair` fetches damaged chunks from replicas, "
                    "or restore the affected files"))  # fmt: skip
    return DAMAGE


def cmd_drill(args) -> int:
    if args.history:
        with Repository(paths.repository(args.repo), writable=False) as repo:
            rows = drillop.history(repo)
        if args.json:
            output.print_json(rows)
            return 0
        output.print_rows(
            ("when", "path", "commit", "from", "files", "MB/s", "seconds", "verdict"),
            [(datetime.fromtimestamp(r["started_ns"] / 1e9).isoformat(timespec="seconds"), r["path"], str(r["commit"]),
              r["source"], str(r["files"]), f"{r['mb_per_s']:.1f}", f"{r['seconds']:.1f}", r["verdict"]) for r in rows],
        )  # fmt: skip
        return 0
    if not args.path:
        raise UsageError("drill: PATH is required (or --history)")
    repo_dir, repo_path = paths.resolve(args.path, args.repo)
    with Repository(repo_dir, writable=False) as repo:
        result = drillop.drill(repo, repo_path, at=args.at, source=args.source, check_cmd=args.check_cmd,
                               scratch=Path(args.scratch) if args.scratch else None, keep=args.keep)  # fmt: skip
    if args.json:
        output.print_json(result.as_dict())
    else:
        o = output.out
        o.print(f"drill {result.path} at commit {result.commit} from {result.source}: {result.files} files, "
                f"{output.human_bytes(result.bytes)} restored in {result.restore_seconds:.2f}s "
                f"({result.mb_per_s:.1f} MB/s), {result.verified} verified"
                + (f"; check command {result.check_seconds:.2f}s" if result.check_cmd else ""), markup=False)  # fmt: skip
        for path in result.unverified:
            o.print(f"  unverified (no BLAKE3 recorded at commit): {path}", markup=False)
        for problem in result.problems:
            o.print(f"  FAILED {problem}", markup=False, highlight=False)
        if args.keep:
            o.print(f"restored into {result.scratch}", markup=False)
        o.print(f"verdict: {result.verdict.upper()}")
    if result.verdict != "pass":
        if not args.json:
            output.error(f"drill failed: {result.problems[0]}")
        return DAMAGE
    return 0


def cmd_backup(args) -> int:
    with Repository(paths.repository(args.repo), writable=False) as repo:
        replicated = repo.replicas.run_once() if repo.replicas.configured else 0
        result = repo.metabackup.run()
        lag = repo.replicas.lag() if repo.replicas.configured else None
    if result is None:
        raise UsageError("no warm tier and no replicas configured: nowhere to back up to")
    doc = {"replicated_packs": replicated, "generation": result.generation, "name": result.name,
           "bytes": result.bytes, "locations": result.locations, "errors": result.errors,
           "replication_lag_packs": lag.packs if lag else 0}  # fmt: skip
    if args.json:
        output.print_json(doc)
    else:
        output.out.print(f"replicated {replicated} packs; metadata backup {result.name} "
                         f"({output.human_bytes(result.bytes)}) to {', '.join(result.locations) or 'nowhere'}",
                         markup=False)  # fmt: skip
        for e in result.errors:
            output.error(e)
    if not result.locations:
        raise CorruptData(f"metadata backup failed everywhere: {'; '.join(result.errors)}")
    return 0


def cmd_recover(args) -> int:
    result = recoverop.recover(args.from_url, Path(args.newrepo), endpoint_url=args.endpoint_url, verify=args.verify)
    if args.json:
        output.print_json(vars(result))
    else:
        o = output.out
        when = datetime.fromtimestamp(result.backup_time_ns / 1e9).isoformat(timespec="seconds")
        o.print(f"recovered {result.repository} from {result.backup} (generation {result.generation}, {when}, "
                f"up to commit {result.last_commit})", markup=False)  # fmt: skip
        o.print(f"{result.packs} packs known to the backup ({result.rehomed_from_hot} re-homed from the lost hot tier, "
                f"{result.restored_from_replica} restored from replicas); {result.newer_packs} newer packs indexed "
                f"({result.newer_chunks} chunks)", markup=False)  # fmt: skip
        if result.lost_packs:
            o.print(f"LOST {len(result.lost_packs)} packs ({result.lost_chunks} chunks) that were only on the lost "
                    "node; `chunkfs fsck` names the versions affected", markup=False)  # fmt: skip
    if result.fsck is not None and not result.fsck["ok"]:
        output.error("the recovered repository has problems; run `chunkfs fsck` on it for details")
        return DAMAGE
    return 0

