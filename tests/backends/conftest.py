"""Fixtures of the backend suite: servers started once per session, a fresh backend per test.

Each test gets its own prefix in the shared bucket, so tests never see each
other's objects. Credentials reach the backend only the way they do in
production, through boto3's standard chain (here: environment variables set per
test), isolated from the machine's ~/.aws and from the instance metadata service.
"""

from __future__ import annotations

import pytest
from helpers.s3fixtures import isolate_aws, moto_server, own_rclone, rclone_server  # noqa: F401 (fixtures)
from helpers.s3servers import Server

from chunkfs.store.backends.base import Backend
from chunkfs.store.backends.local import LocalBackend


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path_factory):
    """Test credentials in the environment, and nothing else boto3 could find."""
    isolate_aws(monkeypatch, tmp_path_factory)


@pytest.fixture(params=["moto", "rclone"])
def server(request) -> Server:
    """Each S3 server in turn."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture(params=["local", "moto", "rclone"])
def backend(request, tmp_path) -> Backend:
    """Each kind of backend in turn, empty."""
    if request.param == "local":
        return LocalBackend(tmp_path / "store")
    return request.getfixturevalue(f"{request.param}_server").backend()
