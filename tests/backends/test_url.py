"""Tier locations → backends: s3:// URLs, file:// URLs, plain paths; anything else is a ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkfs.errors import ConfigError
from chunkfs.store.backends.local import LocalBackend
from chunkfs.store.backends.s3 import S3Backend
from chunkfs.store.backends.url import backend_for


def test_s3_url():
    b = backend_for("s3://bucket/warm/", endpoint_url="http://127.0.0.1:9000", storage_class="STANDARD_IA")
    assert isinstance(b, S3Backend)
    assert (b.url, b.endpoint_url) == ("s3://bucket/warm", "http://127.0.0.1:9000")


@pytest.mark.parametrize(
    "url, base, root",
    [
        ("file:///srv/cold", None, "/srv/cold"),
        ("file://localhost/srv/a%20b", None, "/srv/a b"),
        ("/srv/hot", Path("/repo"), "/srv/hot"),
        ("hot", Path("/repo"), "/repo/hot"),
        ("hot", None, "hot"),
    ],
)
def test_local(url, base, root):
    b = backend_for(url, base=base, endpoint_url="http://ignored")
    assert isinstance(b, LocalBackend) and b.root == Path(root)


@pytest.mark.parametrize("url", ["gs://bucket/x", "http://host/x", "file://host/x", "file://relative"])
def test_rejected(url):
    with pytest.raises(ConfigError, match="file:///"):
        backend_for(url)
