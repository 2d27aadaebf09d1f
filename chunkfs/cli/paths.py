"""PATH arguments: a path inside a mounted chunkfs, or a repository path with ``--repo``.

DESIGN.md's command-line rule: ``/models/llama/run1`` (inside a mount) names the
repository mounted there and the path below the mountpoint; with ``--repo REPO``
(or ``$CHUNKFS_REPO``) the argument is a path inside the repository (``/llama/run1``).
"""

from __future__ import annotations

import os
from pathlib import Path

from chunkfs.errors import UsageError


def chunkfs_mounts() -> list[tuple[Path, Path]]:
    """(mountpoint, repository) of every chunkfs mount, from /proc/self/mountinfo."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "fuse.chunkfs":
                mounts.append((Path(_unescape(fields[4])), Path(_unescape(fields[sep + 2]))))
    return mounts


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def resolve(path: str, repo: str | None) -> tuple[Path, str]:
    """(repository directory, repository path) for a PATH argument."""
    if repo:
        return Path(repo), "/" + path.strip("/")
    absolute = Path(os.path.abspath(path))
    best = None
    for mountpoint, repository in chunkfs_mounts():
        if absolute == mountpoint or mountpoint in absolute.parents:
            if best is None or len(mountpoint.parts) > len(best[0].parts):
                best = (mountpoint, repository)
    if best is None:
        raise UsageError(
            f"{path}: not inside a mounted chunkfs; pass --repo REPO to name a repository path"
        )
    mountpoint, repository = best
    rel = absolute.relative_to(mountpoint)
    return repository, "/" + ("" if rel == Path(".") else str(rel))
