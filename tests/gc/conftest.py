"""Fixtures of the gc tests (helpers: gc_helpers.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # gc_helpers, whatever pytest's import mode

from gc_helpers import settings  # noqa: E402

from chunkfs.repo import Repository  # noqa: E402


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def make_repo(repo_path: Path) -> Iterator[Callable[..., Repository]]:
    opened: list[Repository] = []

    def make(**gc) -> Repository:
        repo = Repository.create(repo_path, settings=settings(**gc))
        opened.append(repo)
        return repo

    yield make
    for r in opened:
        r.close()


@pytest.fixture
def gc_env() -> dict:
    env = dict(os.environ)
    env.pop("CHUNKFS_GC_HOOK", None)
    return env
