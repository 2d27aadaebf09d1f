"""Repository commands: init, join, forget-node, import, export, stats, du, index rebuild."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from chunkfs import config
from chunkfs.cli import output, paths
from chunkfs.errors import CorruptData
from chunkfs.ops import cluster as clusterop
from chunkfs.ops import rebuild, stats, transfer
from chunkfs.ops import status as statusop
from chunkfs.repo import Repository


def register(sub, repo_argument) -> None:
    p = sub.add_parser("init", help="create a repository", description="Create a new, empty repository.")
    _new_repository_args(p)
    p.add_argument("--warm", metavar="URL", help="warm tier: s3://bucket/prefix or a directory")
    p.add_argument("--cold", metavar="URL", help="cold tier: s3://bucket/prefix or a directory (NFS)")
    _s3_args(p)
    p.add_argument(
        "--cold-archive", action="store_true", help="the cold tier is an archive: reads need `chunkfs thaw`"
    )
    p.add_argument(
        "--shared", action="store_true",
        help="other nodes may join it (`chunkfs join`): the warm tier (an S3 store with conditional writes) "
        "also holds the shared log of changes (docs/multinode.md)",
    )  # fmt: skip
    output.json_argument(p)
    p.set_defaults(handler=cmd_init)

    p = sub.add_parser(
        "join",
        help="make this node a member of a shared repository",
        description="Create REPO on this node as a member of the shared repository whose warm tier is URL "
        "(made with `chunkfs init --shared`): same repository id and settings, a hot tier and index of its "
        "own. The shared log is applied at once; afterwards the mount (or `chunkfs sync`) publishes this "
        "node's changes and applies the other nodes' (docs/multinode.md).",
    )
    _new_repository_args(p)
    p.add_argument("url", metavar="URL", help="the shared repository's warm tier: s3://bucket/prefix")
    _s3_args(p)
    output.json_argument(p)
    p.set_defaults(handler=cmd_join)

    p = sub.add_parser(
        "forget-node",
        help="remove a member that is gone for good from a shared repository",
        description="Remove node NODE (an id from `chunkfs status`) from the shared repository REPO belongs "
        "to: gc sweeps stop waiting for it. Run it on any other member when a machine is lost for good. "
        "What NODE published stays; what it had not published is lost, and if it ever runs again it stops "
        "(every node ignores its later log entries). Its packs become this node's, and its gc deletes them "
        "from the warm tier once empty (docs/multinode.md).",
    )
    repo_argument(p)
    p.add_argument("node", metavar="NODE", help="the member's node id")
    output.json_argument(p)
    p.set_defaults(handler=cmd_forget_node)

    p = sub.add_parser(
        "import",
        help="copy a local file or tree into the repository",
        description="Copy SRC (a local file or directory) to DEST (a path in the repository), "
        "chunking and deduplicating it exactly as the mount does. Works while the repository is "
        "mounted: the import writes beside the mount, which shows the result within a second.",
    )
    repo_argument(p)
    p.add_argument("src", metavar="SRC", help="local file or directory")
    p.add_argument("dest", metavar="DEST", help="repository path, e.g. /llama/run1")
    output.json_argument(p)
    p.set_defaults(handler=cmd_import)

    p = sub.add_parser(
        "export",
        help="copy a file or tree out of the repository",
        description="Copy SRC (a repository path) to DEST (a local path); every chunk is verified.",
    )
    repo_argument(p)
    p.add_argument("src", metavar="SRC", help="repository path")
    p.add_argument("dest", metavar="DEST", help="local destination")
    output.json_argument(p)
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser(
        "stats",
        help="logical vs stored bytes, dedup and compression",
        description="Show what the repository holds. Logical: the current tree (the sum of its file sizes) "
        "and every version the history keeps. Chunks (raw bytes, each distinct chunk once): unique = those "
        "the current tree references + those only older versions reference + unreferenced ones (the next "
        "gc reclaims them); stored = the same after compression. Packs: pack bytes = stored + condemned "
        "(waiting for gc's sweep) + overhead (headers, footers) + dead space (gc repacks it away). Dedup "
        "ratio: the versions' bytes per referenced unique byte; stored / versions: pack bytes per byte of "
        "every version as a plain copy (docs/operations.md, 'What stats counts').",
    )
    repo_argument(p)
    output.json_argument(p, "the figures")
    p.set_defaults(handler=cmd_stats)

    p = sub.add_parser(
        "du",
        help="logical and stored bytes per run and tier",
        description="For every run (pack group) under PATH: its current files and their logical size, and "
        "the bytes of the run's own packs on each tier — every version's chunks, headers and the dead space "
        "gc has not repacked yet included (data shared with earlier runs counts where it was first stored). "
        "So stored can exceed logical: `chunkfs stats` splits the repository's figures. 'chunks' is the "
        "stored size of the run's chunks over their raw size: what zstd and the byte planes of re-encoded "
        "float chunks (docs/tiers.md) saved.",
    )
    repo_argument(p)
    p.add_argument("path", metavar="PATH", nargs="?", default=None, help="default: the whole repository")
    p.add_argument(
        "--encodings", action="store_true",
        help="also each run's chunks per encoding: none, zstd, zstd after 2-byte planes (bf16/fp16), "
        "after 4-byte planes (fp32)",
    )  # fmt: skip
    output.json_argument(p, "the figures (always with the encodings)")
    p.set_defaults(handler=cmd_du)

    p = sub.add_parser("index", help="index maintenance", description="Index maintenance.")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    r = isub.add_parser(
        "rebuild",
        help="rebuild the chunk index from the packs alone (and salvage a damaged index)",
        description="Recreate the chunk and pack index from the packs' own footers and records. A "
        "truncated, corrupt or missing index is first kept aside as REPO/index.damaged-TIME, and every "
        "record that can still be read from it (the tree, its history, the registry) is salvaged into "
        "a new one. The repository must not be mounted.",
    )
    repo_argument(r)
    output.json_argument(r)
    r.set_defaults(handler=cmd_rebuild)


def _new_repository_args(p) -> None:
    """REPO and --hot: what ``init`` and ``join`` create."""
    p.add_argument("repo_dir", metavar="REPO", help="directory to create (must be new or empty)")
    p.add_argument("--hot", metavar="DIR", help="directory of the hot tier (default: REPO/hot)")


def _s3_args(p) -> None:
    p.add_argument("--endpoint-url", metavar="URL", help="S3 endpoint (MinIO, Ceph): https://host:port")
    p.add_argument("--region", metavar="NAME", help="S3 region")


def cmd_init(args) -> int:
    settings = config.Settings()
    tiers = {"warm": args.warm, "cold": args.cold, "endpoint_url": args.endpoint_url, "region": args.region}
    tiers = {k: v for k, v in tiers.items() if v}
    if args.cold_archive:
        tiers["cold_archive"] = True
    if tiers:
        settings = dataclasses.replace(settings, tiers=dataclasses.replace(settings.tiers, **tiers))
    hot = Path(args.hot) if args.hot else None
    if args.shared:
        repo = clusterop.init_shared(Path(args.repo_dir), settings, hot)
    else:
        repo = Repository.create(Path(args.repo_dir), hot=hot, settings=settings)
    result = {"repository": str(repo.path), "hot": str(repo.hot_path)}
    if repo.cluster is not None:
        result["shared"] = True
        result["node"] = repo.cluster.node
    for tier in ("warm", "cold"):
        if getattr(args, tier):
            result[tier] = getattr(args, tier)
    repo.close()
    if args.json:
        output.print_json(result)
    else:
        more = "".join(f", {t} tier: {result[t]}" for t in ("warm", "cold") if t in result)
        shared = f"; shared, this node is {result['node']}" if "node" in result else ""
        output.out.print(f"created repository {result['repository']} (hot tier: {result['hot']}{more}){shared}")
    return 0


def cmd_join(args) -> int:
    with output.progress("replay the shared log", None):
        repo, position = clusterop.join(
            Path(args.repo_dir), args.url, endpoint_url=args.endpoint_url or "", region=args.region or "",
            hot=Path(args.hot) if args.hot else None,
        )  # fmt: skip
    with repo:
        result = {"repository": str(repo.path), "hot": str(repo.hot_path), "warm": args.url,
                  "node": repo.cluster.node, "log_position": position}  # fmt: skip
    if args.json:
        output.print_json(result)
    else:
        output.out.print(
            f"joined {args.url} as node {result['node']}: repository {result['repository']}, "
            f"{position} log entries applied"
        )
    return 0


def cmd_forget_node(args) -> int:
    with Repository(paths.repository(args.repo), writable=False) as repo:
        position = clusterop.forget_node(repo, args.node)
    if args.json:
        output.print_json({"forgotten": args.node, "log_position": position})
    else:
        output.out.print(f"node {args.node} forgotten (log entry {position}): gc no longer waits for it")
    return 0


def _print_transfer(args, verb: str, r: transfer.TransferResult) -> None:
    if args.json:
        output.print_json(vars(r))
    else:
        output.out.print(
            f"{verb} {r.files} files, {r.directories} directories, {r.symlinks} symlinks, "
            f"{output.human_bytes(r.bytes)}"
        )


def cmd_import(args) -> int:
    Repository.tune_allocator()
    src = Path(args.src)
    with (
        Repository.for_writing(paths.repository(args.repo)) as repo,  # beside a mount, if mounted
        output.progress(f"import {src.name}", transfer.source_size(src) if src.exists() else None) as bar,
    ):
        result = transfer.import_tree(repo, src, args.dest, bar)
    _print_transfer(args, "imported", result)
    return 0


def cmd_export(args) -> int:
    with (
        Repository(paths.repository(args.repo), writable=False) as repo,
        output.progress(f"export {args.src}", None) as bar,
    ):
        result = transfer.export_tree(repo, args.src, Path(args.dest), bar)
    _print_transfer(args, "exported", result)
    return 0


def cmd_stats(args) -> int:
    repo_dir = paths.repository(args.repo)
    with Repository(repo_dir, writable=False) as repo:
        s = stats.collect(repo)
        usage = statusop.tier_usage(repo)
    bytes_by_tier = {t: u.bytes for t, u in usage.items() if u.configured or u.packs}
    if args.json:
        output.print_json(s.as_dict() | {"bytes_by_tier": bytes_by_tier})
        return 0
    h = output.human_bytes
    output.print_table(
        f"chunkfs repository {repo_dir}",
        [
            ("files", f"{s.files}"),
            ("logical: current tree", h(s.logical_bytes)),
            ("logical: every version", f"{h(s.versions_bytes)} in {s.versions} versions"),
            ("unique chunks", f"{h(s.unique_bytes)} in {s.chunks} chunks ="),
            ("  the current tree's", h(s.current_unique_bytes)),
            ("  only older versions'", h(s.history_unique_bytes)),
            ("  unreferenced (gc)", h(s.unreferenced_bytes)),
            ("stored (after compression)", h(s.stored_bytes)),
            ("pack bytes", f"{h(s.pack_bytes)} in {', '.join(f'{n} {t}' for t, n in s.packs_by_tier.items()) or '0'} packs ="),
            ("  stored", h(s.stored_bytes)),
            ("  condemned (gc sweeps)", h(s.condemned_bytes)),
            ("  headers and footers", h(s.overhead_bytes)),
            ("  dead space (gc repacks)", h(s.dead_bytes)),
            *((f"on {t}", h(n)) for t, n in bytes_by_tier.items()),
            ("dedup ratio", f"{s.dedup_ratio:.2f}x"),
            ("compression ratio", f"{s.compression_ratio:.2f}x"),
            *((f"  {name}", f"{e['chunks']} chunks, {h(e['raw'])} stored as {h(e['stored'])}")
              for name, e in s.encodings.items()),
            ("stored / every version", f"{s.stored_fraction:.1%}"),
            ("index", h(s.index_bytes)),
        ],
    )
    return 0


def cmd_du(args) -> int:
    if args.path is not None:
        repo_dir, path = paths.resolve(args.path, args.repo)
    else:
        repo_dir, path = paths.repository(args.repo), "/"
    with Repository(repo_dir, writable=False) as repo:
        runs = statusop.du(repo, path)
    if args.json:
        output.print_json([r.as_dict() for r in runs])
        return 0
    h = output.human_bytes
    rows = [
        (r.run, str(r.files), h(r.logical_bytes), h(r.stored_bytes),
         *(h(r.stored[t]) if t in r.stored else "" for t in ("hot", "warm", "cold")),
         _ratio(sum(e["stored"] for e in r.encodings.values()), r.raw_bytes))
        for r in runs
    ]  # fmt: skip
    output.print_rows(("run", "files", "logical", "stored", "hot", "warm", "cold", "chunks"), rows)
    if args.encodings:
        rows = [
            (r.run, name, str(e["chunks"]), h(e["raw"]), h(e["stored"]), _ratio(e["stored"], e["raw"]))
            for r in runs for name, e in r.encodings.items()
        ]  # fmt: skip
        output.out.print()
        output.print_rows(("run", "encoding", "chunks", "raw", "stored", "stored/raw"), rows)
    return 0


def _ratio(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else ""


def cmd_rebuild(args) -> int:
    with output.progress("rebuild index", None, unit="packs") as bar:
        result = rebuild.rebuild_repository(paths.repository(args.repo), bar)
    if args.json:
        output.print_json(vars(result))
    else:
        if result.index_damaged:
            output.out.print(f"the index was damaged: {result.index_damaged.split(';')[0]}")
            if result.moved_to:
                output.out.print(f"kept the damaged index at {result.moved_to}")
            kept = ", ".join(f"{n} {db}" for db, n in result.salvaged.items() if n) or "nothing"
            output.out.print(f"salvaged from it: {kept}")
            if result.dangling:
                output.out.print(f"dropped {result.dangling} directory entries whose inode was lost")
            if result.salvaged.get("inodes", 0) <= 1:
                output.error(
                    "no file of the tree could be salvaged: restore it from a metadata backup with "
                    "`chunkfs recover --from URL NEWREPO` (a warm tier or replica that holds meta/index-*.tar.zst)"
                )
        output.out.print(
            f"rebuilt the index from {result.packs} packs: {result.chunks} chunks"
            f" ({result.unsealed_packs} unsealed packs recovered)"
        )
        for problem in result.damaged:
            output.error(problem)
        if result.missing_chunks:
            output.error(f"{result.missing_chunks} chunks referenced by files are in no pack; run `chunkfs fsck`")
    return CorruptData.exit_code if result.damaged or result.missing_chunks else 0
