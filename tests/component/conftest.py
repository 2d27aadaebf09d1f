"""Fixtures of the component tests: repositories with small chunks, opened through the library API.

``make_repo(**settings)`` creates one with ``small_settings(**settings)`` (helpers/repos.py):
64 KiB chunks, 1 MiB packs, so a few MiB of checkpoints exercise many chunks, several packs and
the tiny-piece merging of the chunker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.repos import closing, make_repo, repo_path, repo_settings  # noqa: F401 (fixtures)

from chunkfs.repo import Repository


@pytest.fixture
def repo(make_repo) -> Repository:  # noqa: F811 — an imported fixture, requested by name
    return make_repo()


@pytest.fixture
def reopen(
    repo_path: Path,  # noqa: F811 — an imported fixture, requested by name
) -> Iterator[Callable[..., Repository]]:
    """Open the repository at ``repo_path`` again (the caller closed the previous handle)."""
    yield from closing(lambda writable=True: Repository(repo_path, writable=writable))
