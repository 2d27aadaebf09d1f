"""Fixtures of the admin tests (fsck, replication, drills, disaster recovery): real S3 servers.

moto's ThreadedMotoServer (in this process) holds the warm and cold tiers; ``rclone serve s3``
(a subprocess, another endpoint: a second failure domain) holds the replicas. The helpers are
those of the tier and backend suites.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tiers"))  # tier_helpers
sys.path.insert(0, str(HERE.parent / "backends"))  # s3_servers
sys.path.insert(0, str(HERE.parent / "component"))  # component_helpers

from moto.server import ThreadedMotoServer  # noqa: E402
from s3_servers import ACCESS_KEY, BUCKET, SECRET_KEY, Rclone, Server, admin_client  # noqa: E402

from chunkfs import clock  # noqa: E402


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path_factory):
    """Test credentials in the environment, and nothing else boto3 could find."""
    for var in (
        "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
        "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
        "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI", "CHUNKFS_REPO",
    ):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    nowhere = tmp_path_factory.getbasetemp() / "no-aws-config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(nowhere))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)


@pytest.fixture(autouse=True)
def restore_clock(monkeypatch):
    monkeypatch.setattr(clock, "_offset_ns", clock._offset_ns)


@pytest.fixture(scope="session")
def moto_server():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        admin_client(endpoint).create_bucket(Bucket=BUCKET)
    except Exception as e:
        server.stop()
        pytest.fail(f"moto server at {endpoint} does not work: {e!r}")
    yield Server("moto", endpoint)
    server.stop()


@pytest.fixture(scope="session")
def rclone_server(tmp_path_factory):
    """One rclone server for the session: the replicas' failure domain."""
    work = tmp_path_factory.mktemp("rclone")
    process = Rclone(work / "data", work)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "CHUNKFS_REPO"}
