"""How the CLI talks to people and scripts: progress bars, tables, JSON, errors.

Progress bars and colours appear only when stderr is a terminal, so piped and
scripted runs stay quiet; piped tables are never cut to a terminal's width;
``--json`` output goes to stdout alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

PIPED_WIDTH = 1 << 16
"""The width tables are laid out in when the output is not a terminal: wide enough that no value is
ever cut or wrapped (a script reads full paths; ``--json`` stays the machine format)."""


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=PIPED_WIDTH, soft_wrap=True)


err = _console(stderr=True)
out = _console(stderr=False)


@contextlib.contextmanager
def progress(description: str, total: int | None, *, unit: str = "bytes") -> Iterator[Callable[[int], None]]:
    """A callable that advances a bar by n; a no-op when stderr is not a terminal."""
    if not err.is_terminal:
        yield lambda n: None
        return
    columns = [TextColumn("{task.description}"), BarColumn()]
    if unit == "bytes":
        columns += [DownloadColumn(), TransferSpeedColumn()]
    else:
        columns += [TextColumn("{task.completed}/{task.total}")]
    columns.append(TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def json_argument(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    """The ``--json`` option of a command whose output a script reads (printed by ``print_json``)."""
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def print_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def print_table(title: str | None, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


def error(message: str) -> None:
    err.print(f"chunkfs: error: {message}", markup=False, highlight=False, soft_wrap=True)


def print_rows(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A table with a header row (listings: log, tags, find)."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in header:
        table.add_column(name)
    for row in rows:
        table.add_row(*row)
    out.print(table)
