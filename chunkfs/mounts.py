"""Which filesystems are mounted where: /proc/self/mountinfo, read in one place.

The CLI finds the repository of a PATH inside a mount here, ``chunkfs umount`` the
repository of a mountpoint, the daemon the device of its own mountpoint, and
``chunkfs.torch`` the repository a training script's checkpoint path lives in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from chunkfs.errors import UsageError

FSTYPE = "fuse.chunkfs"
"""The filesystem type of a chunkfs mount (fs/mount.py names it so)."""


class Mounted(NamedTuple):
    mountpoint: Path
    source: Path  # for a chunkfs mount: its repository directory
    fstype: str
    device: str  # "major:minor"
    read_only: bool


def _unescape(field: str) -> str:
    """A mountinfo path field: the kernel writes space, tab, newline and backslash as octal escapes."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mounted() -> list[Mounted]:
    """Every mount this process sees, in mount order (a later one on a path hides the earlier)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            out.append(Mounted(Path(_unescape(fields[4])), Path(_unescape(fields[sep + 2])), fields[sep + 1],
                               fields[2], "ro" in fields[5].split(",")))  # fmt: skip
    return out


def chunkfs_mounts() -> list[Mounted]:
    return [m for m in mounted() if m.fstype == FSTYPE]


def at(mountpoint: Path) -> Mounted | None:
    """The visible mount at ``mountpoint`` (any filesystem), or None."""
    found = None
    for m in mounted():
        if m.mountpoint == mountpoint:
            found = m
    return found


def containing(path: Path) -> Mounted | None:
    """The chunkfs mount that holds the absolute ``path`` (the innermost), or None."""
    best = None
    for m in chunkfs_mounts():
        inside = path == m.mountpoint or m.mountpoint in path.parents
        if inside and (best is None or len(m.mountpoint.parts) > len(best.mountpoint.parts)):
            best = m
    return best


def split(path: Path) -> tuple[Mounted, str] | None:
    """(the chunkfs mount, the path inside its repository) of an absolute, resolved ``path``
    inside a chunkfs mount, else None."""
    m = containing(path)
    if m is None:
        return None
    rel = path.relative_to(m.mountpoint)
    return m, "/" + ("" if rel == Path(".") else rel.as_posix())


def repository_of(path: Path, repo: str | os.PathLike | None, named: str) -> tuple[Path, str] | None:
    """(repository, repository path) of an absolute, resolved ``path`` inside a chunkfs mount,
    or None outside every mount. A path inside a mount names the repository mounted there:
    ``repo``, a repository the caller named as well (``named``: how, ``--repo `` or ``repo=``,
    for the error), must be that one."""
    inside = split(path)
    if inside is None:
        return None
    mounted, repo_path = inside
    if repo and Path(repo).resolve() != mounted.source.resolve():
        raise UsageError(f"{path}: inside the mount of {mounted.source}, not of {named}{repo}; drop {named.strip()}")
    return mounted.source, repo_path
