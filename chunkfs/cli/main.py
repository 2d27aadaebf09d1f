"""``chunkfs``: argument parsing and error reporting for every subcommand.

Each subcommand module registers its parser and a handler ``run(args) -> int``;
handlers call the library and print. Errors: a ``ChunkfsError`` becomes one
line on stderr and the exit code of its kind (errors.py; 2 for usage errors, as argparse does).
"""

from __future__ import annotations

import argparse
import logging
import sys

from chunkfs import __version__
from chunkfs.cli import (
    admin_cmds,
    mount_cmds,
    output,
    paths,
    registry_cmds,
    repo_cmds,
    tier_cmds,
    version_cmds,
)
from chunkfs.errors import ChunkfsError, NotFound

COMMAND_MODULES = [repo_cmds, mount_cmds, version_cmds, registry_cmds, tier_cmds, admin_cmds]

from chunkfs.cli import gc_cmds

COMMAND_MODULES.append(gc_cmds)


def repo_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repo",
        help="repository directory (default: the mount the PATH or the current directory is in, else "
        "$CHUNKFS_REPO)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chunkfs",
        description="Content-addressed, tensor-aware storage for ML checkpoints.",
    )
    parser.add_argument("--version", action="version", version=f"chunkfs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is being done")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(sub, repo_argument)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="chunkfs: %(levelname)s: %(message)s",
    )
    try:
        return args.handler(args) or 0
    except ChunkfsError as e:  # UsageError included: one line, exit 2
        why = paths.hint() if isinstance(e, NotFound) else None
        output.error(f"{e} ({why})" if why else str(e))
        return e.exit_code
    except OSError as e:  # a local path the user named: missing, not writable, disk full...
        logging.getLogger("chunkfs").info("details", exc_info=True)
        output.error(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
        return 1
    except KeyboardInterrupt:
        output.error("interrupted")
        return 130


def entry() -> None:
    sys.exit(main())
