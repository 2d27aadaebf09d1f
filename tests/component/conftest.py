"""Fixtures of the component tests: repositories with small chunks, opened through the library API.

Chunks are 64 KiB (the smallest ``chunking.chunk_size`` the config accepts) with
4 KiB ``min_chunk``, and packs are sealed at 1 MiB, so a few MiB of checkpoints
exercise many chunks, several packs and the tiny-piece merging of the chunker.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # component_helpers, whatever pytest's import mode

from component_helpers import small_settings  # noqa: E402
from repo_fixtures import closing, creating, repo_path  # noqa: E402, F401 (fixtures)

from chunkfs.repo import Repository  # noqa: E402


@pytest.fixture
def make_repo(repo_path: Path) -> Iterator[Callable[..., Repository]]:
    """``make_repo(**settings)`` creates the repository (once); ``reopen()`` opens it again."""
    yield from creating(repo_path, small_settings)


@pytest.fixture
def repo(make_repo) -> Repository:
    return make_repo()


@pytest.fixture
def reopen(repo_path: Path) -> Iterator[Callable[..., Repository]]:
    """Open the repository at ``repo_path`` again (the caller closed the previous handle)."""
    yield from closing(lambda writable=True: Repository(repo_path, writable=writable))
