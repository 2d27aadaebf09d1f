"""Model registry commands: ``meta get|set|unset|scan`` and ``find`` (docs/registry.md)."""

from __future__ import annotations

import argparse
import datetime
import json
from collections.abc import Callable
from pathlib import Path

from rich.markup import escape

from chunkfs.cli import output, paths
from chunkfs.errors import UsageError
from chunkfs.namespace.registry import Checkpoint, Registry, parse_sort, parse_where
from chunkfs.repo import Repository

resolve: Callable[[str, str | None], tuple[Path, str]] = paths.resolve
"""PATH argument → (repository directory, repository path); a mount-aware resolver."""

FIELD_FLAGS = ("model", "base", "adapter", "run")
"""Level filters with their own flag (the default levels); others use --field LEVEL=VALUE."""


def registry_of(repo: Repository) -> Registry:
    """The repository's registry (the one the library wired, else a new one on its index)."""
    reg = getattr(repo, "registry", None)
    return reg if reg is not None else Registry(repo.index, repo.settings.registry)


class _FindParser(argparse.ArgumentParser):
    """Takes ``--sort -eval_loss`` as written (argparse alone would read -eval_loss as an option)."""

    def parse_known_args(self, args=None, namespace=None):
        if args is not None:
            joined, rest = [], list(args)
            while rest:
                a = rest.pop(0)
                if a == "--sort" and rest and rest[0].startswith("-") and not rest[0].startswith("--"):
                    a = "--sort=" + rest.pop(0)
                joined.append(a)
            args = joined
        return super().parse_known_args(args, namespace)


def register(sub, repo_argument) -> None:
    p = sub.add_parser(
        "meta",
        help="checkpoint metadata: get, set, unset, scan",
        description="Read and change the metadata record of a checkpoint directory (a directory whose "
        "name ends in a step number, e.g. /llama3/8b/lora/run1/checkpoint-500).",
    )
    msub = p.add_subparsers(dest="meta_command", metavar="ACTION", required=True)

    g = msub.add_parser(
        "get",
        help="show a checkpoint's record",
        description="Show a checkpoint's key fields, step and metadata (user keys over extracted ones).",
    )
    repo_argument(g)
    g.add_argument(
        "path", metavar="PATH", help="checkpoint directory (in a mount, or a repository path with --repo)"
    )
    output.json_argument(g, "the record")
    g.set_defaults(handler=cmd_get)

    s = msub.add_parser(
        "set",
        help="set metadata keys of a checkpoint",
        description="Set user metadata: KEY=VALUE ... Numbers stay numbers (eval_loss=0.231), "
        "true/false are booleans, anything else is a string. Works while the repository is mounted; "
        "the same as `setfattr -n user.chunkfs.KEY -v VALUE PATH` through the mount.",
    )
    repo_argument(s)
    s.add_argument("path", metavar="PATH", help="checkpoint directory")
    s.add_argument("pairs", metavar="KEY=VALUE", nargs="+", help="metadata to set")
    output.json_argument(s, "the updated record")
    s.set_defaults(handler=cmd_set)

    u = msub.add_parser("unset", help="remove user metadata keys", description="Remove user metadata keys.")
    repo_argument(u)
    u.add_argument("path", metavar="PATH", help="checkpoint directory")
    u.add_argument("keys", metavar="KEY", nargs="+", help="keys to remove")
    output.json_argument(u, "the updated record")
    u.set_defaults(handler=cmd_unset)

    c = msub.add_parser(
        "scan",
        help="rebuild records from the tree and its sidecar files",
        description="Re-derive the checkpoint records below PATH (default: everything) from the "
        "directory tree, and re-read every sidecar file (trainer_state.json, config.json, "
        "adapter_config.json, training_args.json, chunkfs.json). User metadata is kept.",
    )
    repo_argument(c)
    c.add_argument("path", metavar="PATH", nargs="?", default=None, help="directory to scan (default: /)")
    output.json_argument(c, "the counts")
    c.set_defaults(handler=cmd_scan)

    default_class, sub._parser_class = sub._parser_class, _FindParser  # argparse's one hook for this
    try:
        f = _add_find(sub)
    finally:
        sub._parser_class = default_class
    repo_argument(f)
    for name in FIELD_FLAGS:
        f.add_argument(
            f"--{name}", metavar=name[0].upper(), help=f"only checkpoints whose {name} level is this"
        )
    f.add_argument(
        "--field",
        metavar="LEVEL=VALUE",
        action="append",
        default=[],
        help="filter on a level by name (for repositories with other registry.levels)",
    )
    f.add_argument("--step", metavar="N", type=int, help="only checkpoints at step N")
    f.add_argument("--where", metavar="EXPR", help="metadata conditions, e.g. 'eval_loss<0.3'")
    f.add_argument("--sort", metavar="KEY", help="sort by KEY, -KEY for descending (comma-separated keys)")
    f.add_argument(
        "--latest", action="store_true", help="only the newest match (by step, then time of last change)"
    )
    f.add_argument("--limit", metavar="K", type=int, help="at most K results")
    output.json_argument(f, "the records")
    f.set_defaults(handler=cmd_find)


def _add_find(sub) -> argparse.ArgumentParser:
    return sub.add_parser(
        "find",
        help="query checkpoints by model, run, step and metrics",
        description="List checkpoints from the registry's indexes (no tree walk). Level filters match "
        "exactly. --where: conditions KEY OP VALUE (OP: < <= > >= == !=) joined by 'and' or ',', "
        "e.g. 'eval_loss<0.3 and lr==2e-4'; numbers compare as numbers, strings as strings, a "
        "missing key never matches; quote a value to compare it as a string (run=='\"007\"'). "
        "Keys: the level names, step, path, commit, time, and any metadata key.",
        epilog="examples: chunkfs find --model llama3 --latest;  chunkfs find --run r7 --step 10000;  "
        "chunkfs find --where 'eval_loss<0.3' --sort eval_loss --limit 5;  chunkfs find --sort -eval_loss",
    )


# -- helpers ---------------------------------------------------------------------------


def _open(path: str, repo: str | None) -> tuple[Repository, str]:
    repo_dir, repo_path = resolve(path, repo)
    return Repository(repo_dir, writable=False), repo_path


def _time(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9).isoformat(sep=" ", timespec="seconds")


def _text(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _print_record(args, rec: Checkpoint) -> None:
    if args.json:
        output.print_json(rec.as_dict())
        return
    rows = [("path", rec.path), *((k, v or "''") for k, v in rec.fields.items()), ("step", str(rec.step))]
    rows += [("changed", f"{_time(rec.time_ns)} (commit {rec.commit})")]
    source = {k: "set" for k in rec.user}
    for name, values in rec.extracted.items():
        for k in values:
            source.setdefault(k, name)
    for k in sorted(rec.meta):
        rows.append((k, f"{_text(rec.meta[k])}  ({source.get(k, '')})"))
    output.print_table(None, [(escape(k), escape(v)) for k, v in rows])  # names and values are not markup
    for name, why in sorted(rec.problems.items()):
        output.error(f"{rec.path}/{name}: {why}")


def _pairs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{pair!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


# -- commands ----------------------------------------------------------------------------


def cmd_get(args) -> int:
    repo, path = _open(args.path, args.repo)
    with repo:
        rec = registry_of(repo).get_meta(path)
    _print_record(args, rec)
    return 0


def cmd_set(args) -> int:
    values = _pairs(args.pairs)
    repo_dir, path = resolve(args.path, args.repo)
    with Repository.metadata(repo_dir) as reg:
        rec = reg.set_meta(path, values)
    _print_record(args, rec)
    return 0


def cmd_unset(args) -> int:
    repo_dir, path = resolve(args.path, args.repo)
    with Repository.metadata(repo_dir) as reg:
        rec = reg.set_meta(path, dict.fromkeys(args.keys))
    _print_record(args, rec)
    return 0


def cmd_scan(args) -> int:
    repo_dir, path = resolve(args.path, args.repo) if args.path else (paths.repository(args.repo), "/")
    with Repository(repo_dir, writable=False) as repo:  # first read the sidecar files…
        sidecars = {}
        for ino, size in registry_of(repo).sidecar_files(path):
            content = repo.file_content(ino)
            sidecars[ino] = content.read(0, size)
    with Repository.metadata(repo_dir) as reg:  # …then rewrite the records, in a few transactions
        result = reg.scan(path, sidecars.get)
    if args.json:
        output.print_json(vars(result))
    else:
        output.out.print(
            f"{result.checkpoints} checkpoints below {path}, {result.sidecars} sidecar files read, "
            f"{result.dropped} stale records dropped"
        )
    return 0


def cmd_find(args) -> int:
    levels = {name: getattr(args, name) for name in FIELD_FLAGS if getattr(args, name) is not None}
    for item in args.field:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--field {item!r}: expected LEVEL=VALUE")
        levels[name] = value
    where = parse_where(args.where) if args.where else None  # syntax errors before opening anything
    if args.sort:
        parse_sort(args.sort)
    with Repository(paths.repository(args.repo), writable=False) as repo:
        reg = registry_of(repo)
        records = reg.find(
            fields=levels, step=args.step, where=where, sort=args.sort, latest=args.latest, limit=args.limit
        )
        metric = reg.metric
    if args.json:
        output.print_json([r.as_dict() for r in records])
        return 0
    if not records:
        output.err.print("no matching checkpoints", highlight=False)
        return 0
    extra = [metric]
    for key in [c.key for c in where or []] + [k.lstrip("+-") for k in (args.sort or "").split(",") if k]:
        if key not in extra and key not in ("path", "step") and key not in records[0].fields:
            extra.append(key)
    header = ("path", "step", *extra, "changed")
    rows = [
        (r.path, str(r.step), *("" if r.get(k) is None else _text(r.get(k)) for k in extra), _time(r.time_ns))
        for r in records
    ]
    output.print_rows(header, [tuple(escape(v) for v in row) for row in rows])
    return 0

