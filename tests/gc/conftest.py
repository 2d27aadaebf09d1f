"""Fixtures of the gc tests (helpers: helpers/gc.py): ``make_repo(**gc)`` creates a repository
with small chunks and ``gc_settings(**gc)``, a gc that waits for nothing."""

from __future__ import annotations

import pytest
from helpers.gc import settings
from helpers.repos import make_repo, repo_path  # noqa: F401 (fixtures)


@pytest.fixture
def repo_settings():
    """``make_repo(**gc)`` → a repository with ``helpers.gc.settings(**gc)``."""
    return settings


@pytest.fixture
def gc_env(monkeypatch) -> None:
    """No ``CHUNKFS_GC_HOOK`` from outside: a gc the CLI runs goes to the end unless the test sets one."""
    monkeypatch.delenv("CHUNKFS_GC_HOOK", raising=False)
