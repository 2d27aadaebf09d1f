"""Fixtures of the backend suite: servers started once per session, a fresh backend per test.

Each test gets its own prefix in the shared bucket, so tests never see each
other's objects. Credentials reach the backend only the way they do in
production, through boto3's standard chain (here: environment variables set per
test), isolated from the machine's ~/.aws and from the instance metadata service.
"""

from __future__ import annotations

import pytest
from moto.server import ThreadedMotoServer
from s3_servers import ACCESS_KEY, BUCKET, SECRET_KEY, Rclone, Server, admin_client

from chunkfs.store.backend import Backend, LocalBackend


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path_factory):
    """Test credentials in the environment, and nothing else boto3 could find."""
    for var in (
        "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
        "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
        "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    nowhere = tmp_path_factory.getbasetemp() / "no-aws-config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(nowhere))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)


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
    base = tmp_path_factory.mktemp("rclone")
    process = Rclone(base / "data", base)
    process.start()
    yield process.server()
    process.stop()


@pytest.fixture
def own_rclone(tmp_path):
    """An rclone server of the test's own, which it may stop and restart."""
    process = Rclone(tmp_path / "data", tmp_path)
    process.start()
    yield process
    process.stop()


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
