"""Version commands: log, tag, restore, diff.

They work the same whether or not the repository is mounted: they only read
the index, or (tag, restore) write small LMDB transactions, which LMDB allows
alongside a running mount; no pack is written, so the repository lock is not
needed.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from chunkfs.cli import output, paths
from chunkfs.errors import NotFound, UsageError
from chunkfs.ops import diff as diffop
from chunkfs.ops import restore as restoreop
from chunkfs.repo import Repository


def _time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).astimezone().isoformat(timespec="seconds")


def register(sub, repo_argument) -> None:
    p = sub.add_parser(
        "log",
        help="versions of a file or directory",
        description="List every version of PATH, newest first: commit, time, size, new (the bytes of "
        "chunks the version before it at this path did not have: what a checkpoint saved over the last one "
        "changed), whole-file BLAKE3, writer. For a directory: its entries created and removed. Removed "
        "paths keep their history.",
    )
    repo_argument(p)
    p.add_argument("path", metavar="PATH", help="path in a mount, or a repository path with --repo")
    output.json_argument(p, "the versions")
    p.set_defaults(handler=cmd_log)

    p = sub.add_parser(
        "tag",
        help="name a point in time",
        description="Pin the current commit (or --at COMMIT) under NAME: the versions of the tree under PATH "
        "(the whole tree without one) as of that commit are never removed by retention. It appears as "
        "MOUNT/.snapshots/NAME/.",
    )
    repo_argument(p)
    p.add_argument("name", metavar="NAME", nargs="?", help="tag name (letters, digits, . _ + -)")
    p.add_argument("path", metavar="PATH", nargs="?", help="the subtree the tag keeps (default: the whole tree)")
    p.add_argument("--at", metavar="POINT", help="commit number, ISO time or tag (default: now; in a repository "
                   "shared by several nodes only a tag of now is made on every node)")
    p.add_argument("--list", action="store_true", help="list tags")
    p.add_argument("--delete", action="store_true", help="delete tag NAME")
    output.json_argument(p)
    p.set_defaults(handler=cmd_tag)

    p = sub.add_parser(
        "restore",
        help="bring back an old version",
        description="Make PATH (file or tree) as it was at POINT the current version again (a new version; "
        "history is kept), or with --to copy it out to a local DEST.",
    )
    repo_argument(p)
    p.add_argument("path", metavar="PATH")
    p.add_argument("--at", metavar="POINT", required=True, help="commit number, ISO time (2026-11-30T12:00) or tag")
    p.add_argument("--to", metavar="DEST", help="copy the old version to this local path instead")
    output.json_argument(p)
    p.set_defaults(handler=cmd_restore)

    p = sub.add_parser(
        "diff",
        help="what changed between two versions",
        description="Compare A and B (files or trees). Each is PATH or PATH@POINT (POINT: commit number, ISO "
        "time or tag; without it, now). For safetensors, PyTorch, GGUF and npy files the changed tensors are "
        "named with the bytes that differ.",
    )
    repo_argument(p)
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    output.json_argument(p, "the changes")
    p.set_defaults(handler=cmd_diff)


def _open(args, path: str) -> tuple[Repository, str]:
    repo_dir, repo_path = paths.resolve(path, args.repo)
    return Repository(repo_dir, writable=False), repo_path


def cmd_log(args) -> int:
    repo, path = _open(args, args.path)
    with repo:
        entries = repo.history.log(path)
    if args.json:
        output.print_json([vars(e) for e in entries])
        return 0
    rows = []
    for e in entries:
        size = output.human_bytes(e.size) if e.event != "removed" else ""
        who = str(e.writer_uid) if e.writer_uid is not None else ""
        event = f"{e.event} (whole at @{e.whole_at})" if e.whole_at is not None else e.event
        new, stored = (output.human_bytes(n) if n is not None else "" for n in (e.new_bytes, e.stored_bytes))
        delta = output.human_bytes(e.delta_bytes) if e.delta_bytes else ""  # most versions have none
        rows.append((str(e.commit), _time(e.time_ns), event, e.kind, size, new, stored, delta, e.blake3[:16], who, e.path))
    output.print_rows(("commit", "time", "event", "kind", "size", "new", "stored", "as delta", "blake3", "uid", "path"), rows)
    return 0


def cmd_tag(args) -> int:
    if args.list:
        repo_dir = paths.resolve(args.path, args.repo)[0] if args.path else paths.repository(args.repo)
        with Repository(repo_dir, writable=False) as repo:
            tags = repo.history.tags()
        if args.json:
            output.print_json([{"name": n, "commit": c, "created": _time(t), "path": p} for n, c, t, p in tags])
        else:
            output.print_rows(("tag", "commit", "created", "path"), [(n, str(c), _time(t), p or "/") for n, c, t, p in tags])
        return 0
    if not args.name:
        raise UsageError("give a tag NAME, or --list")
    repo_dir, repo_path = paths.resolve(args.path, args.repo) if args.path else (paths.repository(args.repo), "/")
    with Repository(repo_dir, writable=False) as repo:
        if args.delete:
            repo.history.delete_tag(args.name)
            result = {"deleted": args.name}
        else:
            commit = repo.history.resolve_point(args.at) if args.at else None
            path = repo_path if args.path else ""
            result = {"tag": args.name, "commit": repo.history.tag(args.name, commit, path), "path": path or "/"}
    if args.json:
        output.print_json(result)
    elif args.delete:
        output.out.print(f"deleted tag {args.name}")
    else:
        output.out.print(f"tagged commit {result['commit']} as {args.name}")
    return 0


def cmd_restore(args) -> int:
    repo, path = _open(args, args.path)
    with repo:
        commit = repo.history.resolve_point(args.at)
        if args.to:
            with output.progress(f"restore {path}", None) as bar:
                copied = restoreop.restore_copy(repo, path, commit, Path(args.to), bar)
            result = {"commit": commit, "copied_to": os.path.abspath(args.to), **vars(copied)}
        else:
            restored = restoreop.restore_in_place(repo, path, commit)
            if not args.repo:
                _tell_mount(args.path, path, restored.rewritten)
            result = vars(restored)
    if args.json:
        output.print_json(result)
    elif args.to:
        output.out.print(f"copied {path} as of commit {commit} to {args.to} ({result['files']} files)")
    else:
        output.out.print(
            f"restored {path} as of commit {commit}: {result['restored']} entries brought back, "
            f"{result['unchanged']} already identical"
        )
    return 0


def _tell_mount(mount_path: str, repo_path: str, rewritten: list[tuple[str, int]]) -> None:
    """Make the mount show files that ``restore`` gave old content under the same inode.

    The mount runs with the kernel's writeback cache, and then the kernel trusts its
    own idea of a file's size over the daemon's (fs/fuse: ``fuse_get_cache_mask``): a
    file restored to a different size would read truncated or zero-padded until the
    kernel forgot the inode. A truncate to the restored size through the mount makes
    the daemon answer with its attributes, which the kernel takes, and drops cached
    pages; the daemon commits nothing for a truncate that does not change the size.
    """
    base = paths.real_path(mount_path)
    for path, size in rewritten:
        target = base / path[len(repo_path) :].lstrip("/") if path != repo_path else base
        try:
            os.truncate(target, size)
        except OSError as e:
            output.err.print(
                f"warning: {target}: the mount may show the old size until it is remounted ({e.strerror})",
                markup=False,
                highlight=False,
            )


def _side(repo: Repository, args, spec: str) -> diffop.Side:
    """PATH or PATH@POINT; an '@' not followed by a valid point is part of the name (``@latest``)."""
    if "@" in spec:
        base, point = spec.rsplit("@", 1)
        try:
            commit = repo.history.resolve_point(point)
        except NotFound:
            pass
        else:
            return diffop.Side(paths.resolve(base, args.repo)[1], commit)
    return diffop.Side(paths.resolve(spec, args.repo)[1], None)


def cmd_diff(args) -> int:
    repo_dir, _ = paths.resolve(args.a.rsplit("@", 1)[0] or "/", args.repo)
    with Repository(repo_dir, writable=False) as repo:
        changes = diffop.diff(repo, _side(repo, args, args.a), _side(repo, args, args.b))
    if args.json:
        output.print_json([vars(c) | {"tensors": [vars(t) for t in c.tensors]} for c in changes])
        return 0
    if not changes:
        output.out.print("no differences")
    for c in changes:
        sizes = f"{output.human_bytes(c.size_a)} → {output.human_bytes(c.size_b)}" if c.status == "changed" else ""
        output.out.print(f"{c.status:8} {c.path} {sizes}", markup=False, highlight=False)
        for t in c.tensors:
            output.out.print(
                f"         {t.status:8} {t.name}: {output.human_bytes(t.bytes_changed)} of "
                f"{output.human_bytes(max(t.size_a, t.size_b))} differ",
                markup=False,
                highlight=False,
            )
        if c.tensors or c.tensors_unchanged:
            output.out.print(f"         ({c.tensors_unchanged} tensors unchanged)", markup=False, highlight=False)
    return 0
