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

from chunkfs.repo import Repository  # noqa: E402


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def make_repo(repo_path: Path) -> Iterator[Callable[..., Repository]]:
    """``make_repo(**settings)`` creates the repository (once); ``reopen()`` opens it again."""
    opened: list[Repository] = []

    def make(**kw) -> Repository:
        repo = Repository.create(repo_path, settings=small_settings(**kw))
        opened.append(repo)
        return repo

    yield make
    for repo in opened:
        repo.close()


@pytest.fixture
def repo(make_repo) -> Repository:
    return make_repo()


@pytest.fixture
def reopen(repo_path: Path) -> Iterator[Callable[..., Repository]]:
    """Open the repository at ``repo_path`` again (the caller closed the previous handle)."""
    opened: list[Repository] = []

    def open_(writable: bool = True) -> Repository:
        r = Repository(repo_path, writable=writable)
        opened.append(r)
        return r

    yield open_
    for r in opened:
        r.close()  # a no-op for those the test closed
