"""Starting a DCP job: WORLD rank processes of ``helpers/dcpranks.py`` at once, as torchrun would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers.s3servers import free_port

RANK_TIMEOUT = 300
RANKS = Path(__file__).with_name("dcpranks.py")


def start_ranks(action: str, world: int, path, step: int, repo=None) -> list[subprocess.Popen]:
    """``path``: the checkpoint directory of every rank, or a list with one per rank (ranks
    on different nodes, each writing through its own node's mount)."""
    port = str(free_port())
    paths = path if isinstance(path, list) else [path] * world
    extra = [str(repo)] if repo is not None else []
    return [
        subprocess.Popen(
            [sys.executable, str(RANKS), action, str(world), str(rank), port, str(paths[rank]), str(step), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]


def run_ranks(action: str, world: int, path, step: int, repo=None) -> None:
    """Run a DCP job of ``world`` ranks to the end; every rank must say ok."""
    procs = start_ranks(action, world, path, step, repo)
    problems = []
    for rank, p in enumerate(procs):
        out, err = p.communicate(timeout=RANK_TIMEOUT)
        if p.returncode != 0 or out.strip() != "ok":
            problems.append(f"rank {rank} of {action}: exit {p.returncode}\n{out}\n{err[-3000:]}")
    assert not problems, "\n".join(problems)
