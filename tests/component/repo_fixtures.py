"""Repository fixtures the component and gc suites share; each suite's conftest imports them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chunkfs.repo import Repository


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    return tmp_path / "repo"


def closing(opener: Callable[..., Repository]) -> Iterator[Callable[..., Repository]]:
    """Yield ``opener``, remembering what it opens; close all of it afterwards (a no-op for those closed)."""
    opened: list[Repository] = []

    def open_(*args, **kwargs) -> Repository:
        repo = opener(*args, **kwargs)
        opened.append(repo)
        return repo

    yield open_
    for repo in opened:
        repo.close()


def creating(repo_path: Path, settings: Callable[..., object]) -> Iterator[Callable[..., Repository]]:
    """``make(**kw)`` creates the repository at ``repo_path`` with ``settings(**kw)``."""
    yield from closing(lambda **kw: Repository.create(repo_path, settings=settings(**kw)))
