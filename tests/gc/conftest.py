"""Fixtures of the gc tests (helpers: gc_helpers.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # gc_helpers, whatever pytest's import mode
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "component"))  # repo_fixtures

from gc_helpers import settings  # noqa: E402
from repo_fixtures import creating, repo_path  # noqa: E402, F401 (fixtures)

from chunkfs.repo import Repository  # noqa: E402


@pytest.fixture
def make_repo(repo_path: Path) -> Iterator[Callable[..., Repository]]:
    yield from creating(repo_path, settings)


@pytest.fixture
def gc_env() -> dict:
    env = dict(os.environ)
    env.pop("CHUNKFS_GC_HOOK", None)
    return env
