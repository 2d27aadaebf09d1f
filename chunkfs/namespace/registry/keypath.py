"""Paths → composite keys: which directories are checkpoints, and under which key (pure).

A *checkpoint directory* is a directory whose name matches ``registry.step_pattern``
and that has at least one directory above it; those directories are the level
fields of its key (``fields_of``). ``dir_prefixes`` answers the reverse question
the queries ask: which keys lie below a given directory.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_U64_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class ParsedPath:
    """What a checkpoint directory's path says: its level fields and its step."""

    fields: tuple[str, ...]
    step: int


def components(path: str) -> list[str]:
    """The names along ``path`` ('/', '' and doubled slashes have none)."""
    return [c for c in path.split("/") if c]


def normalized(path: str) -> str:
    """``path`` as the records store it: absolute, no trailing or doubled slashes."""
    return "/" + "/".join(components(path))


def step_of(name: str, pattern: re.Pattern[str]) -> int | None:
    """The step a directory name stands for, or None if it is not a step directory."""
    m = pattern.search(name)
    if m is None:
        return None
    digits = m.group(1) if pattern.groups else m.group(0)
    if not digits or not digits.isdigit() or not digits.isascii():
        return None
    step = int(digits)
    return step if step <= _U64_MAX else None  # the key stores it as a u64


def run_of(path: str, pattern: re.Pattern[str]) -> str:
    """The run directory of the file at ``path``: the parent of the nearest directory above it that
    is a checkpoint by its name (``/llama/run1`` for ``/llama/run1/checkpoint-500/x``; a step
    directory of the same step inside it is part of the checkpoint, as in the registry), or the
    file's own directory when none is. Pack groups (tiering's runs) are these, so that tiering and
    the registry agree on what a run is, whatever ``registry.step_pattern`` says."""
    dirs = components(path)[:-1]
    for i in range(len(dirs) - 1, 0, -1):
        step = step_of(dirs[i], pattern)
        if step is not None:
            # DeepSpeed's checkpoint-500/global_step500 is one checkpoint; run1/checkpoint-1 is a run's
            if i > 1 and dirs[i].startswith("global_step") and step_of(dirs[i - 1], pattern) == step:
                i -= 1
            return "/" + "/".join(dirs[:i])
    return "/" + "/".join(dirs)


def fields_of(above: Sequence[str], n: int) -> tuple[str, ...]:
    """The ``n`` level fields of the directories above a step directory.

    The last directory is the run (the last level); the others fill the levels
    from the left; extra leading directories join into the first level with
    '/'; missing levels (between the given ones and the run) are ''.
    """
    k = len(above)
    if k >= n:
        return ("/".join(above[: k - n + 1]), *above[k - n + 1 :])
    return (*above[: k - 1], *([""] * (n - k)), above[-1])


def parse_checkpoint(path: str, n: int, pattern: re.Pattern[str]) -> ParsedPath | None:
    """The fields and step of the directory at ``path`` if its name makes it a checkpoint."""
    comps = components(path)
    if len(comps) < 2:
        return None
    step = step_of(comps[-1], pattern)
    if step is None:
        return None
    return ParsedPath(fields_of(comps[:-1], n), step)


def dir_prefixes(path: str, levels: Sequence[str]) -> list[tuple[tuple[str, ...], bool, str | None]]:
    """How the checkpoints below directory ``path`` can be keyed: (fields prefix, open, level).

    Each entry is a key prefix that selects checkpoints whose path lies below
    ``path`` (``open``: the last field only starts with the prefix, the directory
    is inside a joined first level), with the level ``path`` is in that reading.
    Together they select exactly the checkpoints below ``path``, however many
    directories their paths have.
    """
    comps = components(path)
    d, n = len(comps), len(levels)
    if d == 0:
        return [((), False, None)]
    out: list[tuple[tuple[str, ...], bool, str | None]] = []
    for j in range(max(1, d - n + 2), d + 1):  # the first j components are the first level
        prefix = ("/".join(comps[:j]), *comps[j:])
        out.append((prefix, False, levels[len(prefix) - 1]))
    out.append((fields_of(comps, n), False, levels[-1]))  # the run directory itself
    out.append((("/".join(comps) + "/",), True, levels[0]))  # a namespace inside the first level
    seen: set[tuple[tuple[str, ...], bool]] = set()
    return [p for p in out if (p[0], p[1]) not in seen and not seen.add((p[0], p[1]))]
