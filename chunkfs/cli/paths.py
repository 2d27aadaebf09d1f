"""Which repository a command works on, and what its PATH argument names: one rule for all.

* A PATH inside a mounted chunkfs (``/models/llama/run1``) names the repository mounted
  there and the path below the mountpoint — whatever ``$CHUNKFS_REPO`` says (``--repo``, if
  given, must be that repository). Symlinks on the way are followed, so
  ``/models/llama3/@latest/adapter_model.safetensors`` names the file in the newest
  checkpoint. Paths inside ``MOUNT/.snapshots`` are not repository paths: name a past
  version as ``PATH --at POINT`` or ``PATH@POINT``.
* Any other PATH is a path inside the repository given by ``--repo`` or ``$CHUNKFS_REPO``
  (``/llama/run1``); when it does not exist there, the error says it was read that way.
* A command without a PATH works on ``--repo``; without it, on the repository mounted
  where the current directory is; else on ``$CHUNKFS_REPO``.
"""

from __future__ import annotations

import os
from pathlib import Path

from chunkfs import config, mounts
from chunkfs.errors import NotFound, UsageError

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


ENV = "CHUNKFS_REPO"

_reading: str | None = None
"""How the last PATH was read, when as a repository path (``hint``: for a 'not found' error)."""


def _checked(repo: Path, source: str) -> Path:
    if not (repo / config.CONFIG_NAME).exists():
        raise NotFound(f"{repo} (from {source}): not a chunkfs repository (no {config.CONFIG_NAME})")
    return repo


def repository(flag: str | None) -> Path:
    """The repository of a command without a PATH (see the module docstring)."""
    if flag:
        return _checked(Path(flag), "--repo")
    mounted = mounts.containing(Path(os.path.abspath(".")))
    if mounted is not None:
        return mounted.source
    if os.environ.get(ENV):
        return _checked(Path(os.environ[ENV]), f"${ENV}")
    raise UsageError(f"no repository: run this inside a mounted chunkfs, pass --repo REPO or set {ENV}")


def resolve(path: str, flag: str | None) -> tuple[Path, str]:
    """(repository directory, repository path) for a PATH argument (see the module docstring)."""
    global _reading
    _reading = None
    inside = mounts.repository_of(real_path(path), flag, "--repo ")
    if inside is not None:
        return inside
    source = "--repo" if flag else f"${ENV}"
    repo = flag or os.environ.get(ENV)
    if not repo:
        raise UsageError(
            f"{path}: not inside a mounted chunkfs; pass --repo REPO (or set {ENV}) to read it as a path "
            "inside a repository"
        )
    _reading = (
        f"{path} was read as a path inside repository {repo} (from {source}), since it is not inside a "
        "mounted chunkfs"
    )
    return _checked(Path(repo), source), "/" + path.strip("/")


def hint() -> str | None:
    """How the last PATH of this command was read, when as a repository path (for its errors)."""
    return _reading
