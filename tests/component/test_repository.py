"""Creating and opening repositories through the library API."""

from __future__ import annotations

import pytest

from chunkfs import config
from chunkfs.errors import AlreadyExists, ConfigError, NotFound
from chunkfs.repo import Repository


def test_create_writes_a_config_that_opens_with_the_same_settings(repo_path, make_repo):
    repo = make_repo(chunk_size=1 << 20, min_chunk=8 << 10)
    repo.close()
    with Repository(repo_path) as again:
        assert again.settings == repo.settings
        assert again.settings.chunking == config.ChunkingSettings(1 << 20, 8 << 10)


def test_create_refuses_an_existing_repository_and_a_non_empty_directory(tmp_path, repo, repo_path):
    with pytest.raises(AlreadyExists, match="already exists"):
        Repository.create(repo_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(AlreadyExists, match="not empty"):
        Repository.create(tmp_path / "busy")


def test_create_with_invalid_settings_creates_nothing(tmp_path):
    bad = config.Settings(packs=config.PackSettings(target_size=4096))  # below the 1 MiB minimum
    with pytest.raises(ConfigError, match="packs.target_size"):
        Repository.create(tmp_path / "r", settings=bad)
    assert not (tmp_path / "r").exists()
    Repository.create(tmp_path / "r").close()  # and the path is still free for a good one


def test_open_something_that_is_not_a_repository(tmp_path):
    with pytest.raises(NotFound, match="not a chunkfs repository"):
        Repository(tmp_path)


def test_close_twice_is_harmless(repo, repo_path):
    repo.close()
    repo.close()
    with Repository(repo_path):
        pass
