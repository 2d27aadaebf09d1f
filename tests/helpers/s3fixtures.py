"""The S3 fixtures the backend, tier, admin and FUSE suites share; each suite's conftest (or test
module) imports those it uses, so ``aws_env`` is autouse only where it is imported.

moto's ThreadedMotoServer runs in the test process, ``rclone serve s3`` as a subprocess (see
``s3servers.py``). Credentials reach boto3 only through its standard chain (the environment,
per test), isolated from ~/.aws and the metadata service.
"""

from __future__ import annotations

import pytest
from moto.server import ThreadedMotoServer

from helpers.s3servers import ACCESS_KEY, BUCKET, SECRET_KEY, Rclone, Server, admin_client

AWS_VARS = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)  # fmt: skip


def isolate_aws(monkeypatch, tmp_path_factory, also: tuple[str, ...] = ()) -> None:
    """Test credentials in the environment, and nothing else boto3 could find (``also``: more to unset)."""
    for var in AWS_VARS + also:
        monkeypatch.delenv(var, raising=False)
    nowhere = tmp_path_factory.getbasetemp() / "no-aws-config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(nowhere))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path_factory):
    """Test credentials in the environment, and nothing else boto3 could find (nor ``CHUNKFS_REPO``)."""
    isolate_aws(monkeypatch, tmp_path_factory, also=("CHUNKFS_REPO",))


@pytest.fixture(scope="session")
def moto_server():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        admin_client(endpoint).create_bucket(Bucket=BUCKET)
    except Exception as e:  # noqa: BLE001 — whatever the failure, stop the server and fail with it
        server.stop()
        pytest.fail(f"moto server at {endpoint} does not work: {e!r}")
    yield Server("moto", endpoint)
    server.stop()


@pytest.fixture(scope="session")
def rclone_server(tmp_path_factory):
    """One rclone server for the session."""
    base = tmp_path_factory.mktemp("rclone")
    process = Rclone(base / "data", base)
    process.start()
    yield process.server()
    process.stop()


@pytest.fixture
def own_rclone(tmp_path):
    """An rclone server of the test's own, which it may stop and restart."""
    process = Rclone(tmp_path / "rclone-data", tmp_path)
    process.start()
    yield process
    process.stop()
