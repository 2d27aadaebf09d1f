"""PATH arguments: a path inside a mounted chunkfs, or a repository path with ``--repo``.

DESIGN.md's command-line rule: ``/models/llama/run1`` (inside a mount) names the
repository mounted there and the path below the mountpoint; with ``--repo REPO``
(or ``$CHUNKFS_REPO``) the argument is a path inside the repository (``/llama/run1``).
Symlinks on the way are followed, so ``/models/llama3/@latest/adapter_model.safetensors``
names the file in the newest checkpoint. Paths inside ``MOUNT/.snapshots`` are not
repository paths: name a past version as ``PATH --at POINT`` or ``PATH@POINT``.
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


QUERY_LINKS = ("@latest", "@best")
"""The mount's query links (fs/virtual.py): followed even as the last component of a PATH."""


def real_path(path: str) -> Path:
    """``path`` made absolute with the symlinks above its last component resolved (``/models``
    → ``/mnt/models``, ``…/@latest/model.safetensors`` → the checkpoint's real path). The last
    component itself is a name of its own (``chunkfs log`` of a symlink shows the symlink),
    unless it is a query link: ``chunkfs meta get /models/llama3/@latest`` means the checkpoint."""
    absolute = Path(os.path.abspath(path))
    if absolute.parent == absolute:
        return absolute
    real = Path(os.path.realpath(absolute.parent)) / absolute.name
    if absolute.name in QUERY_LINKS and os.path.islink(real):
        real = Path(os.path.realpath(real))
    return real


def resolve(path: str, repo: str | None) -> tuple[Path, str]:
    """(repository directory, repository path) for a PATH argument."""
    if repo:
        return Path(repo), "/" + path.strip("/")
    absolute = real_path(path)
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
