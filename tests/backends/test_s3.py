"""What only the S3 backend does: BLAKE3 verification, error messages, retries, secrets kept out.

Failure cases run against real servers: moto accepts any credentials, so wrong
credentials are tested on ``rclone serve s3 --auth-key``; restarts use an rclone
server of the test's own.
"""

from __future__ import annotations

import os
import threading
import time

import blake3
import pytest
from helpers.s3servers import BUCKET, PART_SIZE, SECRET_KEY, Server, free_port

from chunkfs.errors import BackendUnavailable, ConfigError, CorruptData, NotFound
from chunkfs.store.backends.s3 import S3Backend

WRONG_SECRET = "wrong-secret-Xy7-never-print-me"
BUCKET_MISSING = "bucket does not exist; create it or fix the URL"


def one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text, text
    return text


def test_put_file_uploads_in_parts_and_verifies(server, tmp_path):
    data = os.urandom(2 * PART_SIZE + 999)
    path = tmp_path / "big.pack"
    path.write_bytes(data)
    b = server.backend()
    parts = []
    b._client.meta.events.register("before-call.s3.UploadPart", lambda **kw: parts.append(1))
    b.put_file("p.pack", path)
    assert len(parts) == 3
    digest = blake3.blake3(data).digest()
    b.verify("p.pack", digest, len(data))
    b.verify("p.pack", digest, len(data), reread=True)
    with pytest.raises(CorruptData, match="p.pack: stored BLAKE3"):
        b.verify("p.pack", blake3.blake3(b"other").digest(), len(data))
    with pytest.raises(CorruptData, match=rf"p.pack: {len(data)} bytes stored, expected 5"):
        b.verify("p.pack", digest, 5)
    with pytest.raises(NotFound):
        b.verify("nothing.pack", digest, len(data))


def test_put_file_stores_the_callers_blake3_without_reading_the_file_for_it(server, tmp_path):
    """The caller hashed the pack already (tiers.py): its digest becomes the metadata, and a wrong
    one is what ``verify`` against the index's digest catches."""
    data = os.urandom(PART_SIZE + 1)
    path = tmp_path / "p.pack"
    path.write_bytes(data)
    digest = blake3.blake3(data).digest()
    b = server.backend()
    b.put_file("p.pack", path, blake3_digest=digest)
    metadata = server.client().head_object(Bucket=BUCKET, Key=b._key("p.pack"))["Metadata"]
    assert {k.lower(): v for k, v in metadata.items()} == {"blake3": digest.hex()}
    b.verify("p.pack", digest, len(data), reread=True)

    b.put_file("q.pack", path, blake3_digest=blake3.blake3(b"a different file").digest())
    with pytest.raises(CorruptData, match="q.pack: stored BLAKE3"):
        b.verify("q.pack", digest, len(data))


def test_put_stores_blake3_metadata(server):
    b = server.backend()
    b.put("small", b"hello")
    metadata = server.client().head_object(Bucket=BUCKET, Key=b._key("small"))["Metadata"]
    # rclone capitalises metadata names (Blake3); S3 sends them as stored
    assert {k.lower(): v for k, v in metadata.items()} == {"blake3": blake3.blake3(b"hello").hexdigest()}


def test_verify_reads_content_when_metadata_is_missing(server):
    """Objects written by other tools (or metadata lost by rclone on restart) are hashed instead."""
    b = server.backend()
    server.client().put_object(Bucket=BUCKET, Key=b._key("plain"), Body=b"content")
    b.verify("plain", blake3.blake3(b"content").digest(), 7)
    with pytest.raises(CorruptData, match="plain: content does not match"):
        b.verify("plain", blake3.blake3(b"CONTENT").digest(), 7)


def test_verify_reread_catches_content_that_contradicts_metadata(server):
    b = server.backend()
    claimed = blake3.blake3(b"good bytes").digest()
    server.client().put_object(
        Bucket=BUCKET, Key=b._key("liar"), Body=b"evil bytes", Metadata={"blake3": claimed.hex()}
    )
    b.verify("liar", claimed, 10)  # metadata alone cannot tell
    with pytest.raises(CorruptData, match="liar: content does not match"):
        b.verify("liar", claimed, 10, reread=True)


def test_storage_class(server):
    b = server.backend(storage_class="STANDARD_IA")
    b.put("cold", b"x")
    assert server.client().head_object(Bucket=BUCKET, Key=b._key("cold"))["StorageClass"] == "STANDARD_IA"


def every_call(b: S3Backend, tmp_path) -> dict:
    """Each operation of ``b`` on an object ``obj``, ready to call."""
    path = tmp_path / "f"
    path.write_bytes(b"x")
    return {
        "get": lambda: b.get("obj"),
        "get_range": lambda: b.get_range("obj", 0, 1),
        "size": lambda: b.size("obj"),
        "exists": lambda: b.exists("obj"),
        "list": lambda: list(b.list()),
        "put": lambda: b.put("obj", b"x"),
        "put_file": lambda: b.put_file("obj", path),
        "delete": lambda: b.delete("obj"),
        "verify": lambda: b.verify("obj", bytes(32), 1),
    }


def test_missing_bucket(server, tmp_path):
    b = server.backend("s3://no-such-bucket-here/prefix")
    for what, call in every_call(b, tmp_path).items():
        with pytest.raises(NotFound) as e:
            call()
        assert one_line(e.value) == f"s3://no-such-bucket-here: {BUCKET_MISSING}", what


@pytest.mark.parametrize("wrong", ["secret", "access-key"])
def test_wrong_credentials(rclone_server: Server, monkeypatch, tmp_path, wrong):
    """rclone serve s3 --auth-key checks signatures (moto does not)."""
    good = rclone_server.backend()
    good.put("obj", b"x")
    if wrong == "secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRONG_SECRET)
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-UNKNOWN")
    b = rclone_server.backend(good.url)
    for what, call in every_call(b, tmp_path).items():
        with pytest.raises(BackendUnavailable) as e:
            call()
        text = one_line(e.value)
        assert f"{good.url}/" in text and "access denied" in text and "check the credentials" in text, what
        for secret in (WRONG_SECRET, SECRET_KEY):
            assert secret not in text and secret not in repr(e.value)
    for secret in (WRONG_SECRET, SECRET_KEY):
        assert secret not in repr(b) and secret not in str(b)
    assert good.get("obj") == b"x"


def test_no_credentials(moto_server, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(BackendUnavailable, match="no S3 credentials found; set AWS_ACCESS_KEY_ID"):
        moto_server.backend().get("obj")


def test_dead_endpoint_fails_within_seconds():
    """Refused connections are retried for ``retry_window`` (5 s by default), then reported."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    message = f"s3://{BUCKET}/x/obj: endpoint {endpoint} unreachable"
    b = S3Backend(f"s3://{BUCKET}/x", endpoint_url=endpoint)
    start = time.monotonic()
    with pytest.raises(BackendUnavailable) as e:
        b.get("obj")
    assert b.retry_window - 1 < time.monotonic() - start < b.retry_window + 3
    assert one_line(e.value).startswith(message)
    b = S3Backend(f"s3://{BUCKET}/x", endpoint_url=endpoint, retry_window=0.5)
    for call in (lambda: b.exists("obj"), lambda: b.put("obj", b"x"), lambda: list(b.list("obj"))):
        with pytest.raises(BackendUnavailable) as e:
            call()
        text = one_line(e.value)
        assert f"s3://{BUCKET}/x/obj" in text and f"endpoint {endpoint} unreachable" in text


def test_restarted_server(own_rclone, tmp_path):
    """The client's pooled connections die with the server; the next call after a restart works.

    rclone keeps object metadata in memory only, so after the restart ``verify`` falls back
    to hashing the content.
    """
    b = own_rclone.server().backend()
    b.put("obj", b"before")
    own_rclone.stop()
    own_rclone.start()
    assert b.get("obj") == b"before"
    b.put("obj2", b"after")
    assert sorted(b.list()) == ["obj", "obj2"]
    b.verify("obj", blake3.blake3(b"before").digest(), 6)


def test_call_during_restart_is_retried(own_rclone):
    b = own_rclone.server().backend()
    b.put("obj", b"data")
    own_rclone.stop()
    restart = threading.Timer(1.0, own_rclone.start)
    restart.start()
    try:
        start = time.monotonic()
        assert b.get("obj") == b"data"
        assert time.monotonic() - start >= 0.9
    finally:
        restart.join()


@pytest.mark.parametrize(
    "url",
    [
        "s3://", "s3:///prefix", "s3://UPPER/x", "s3://b", "s3://bucket:9000/x",
        "s3://bucket/a//b", "s3://bucket/../x", "s3://bucket/x?y=1", "gs://bucket/x",
    ],
)  # fmt: skip
def test_bad_url(url):
    with pytest.raises(ConfigError):
        S3Backend(url)


def test_url_and_repr():
    b = S3Backend("s3://my-bucket/a/b/", endpoint_url="http://127.0.0.1:9")
    assert b.url == "s3://my-bucket/a/b"
    assert repr(b) == "S3Backend('s3://my-bucket/a/b', endpoint='http://127.0.0.1:9')"
    assert S3Backend("s3://my-bucket").url == "s3://my-bucket"


def test_credentials_in_urls_are_refused_and_not_repeated():
    with pytest.raises(ConfigError) as e:
        S3Backend("s3://bucket/x", endpoint_url=f"http://user:{WRONG_SECRET}@127.0.0.1:9")
    assert "credentials do not belong in the endpoint URL" in str(e.value)
    assert WRONG_SECRET not in str(e.value)
    with pytest.raises(ConfigError) as e:
        S3Backend(f"s3://user:{WRONG_SECRET}@bucket/x")
    assert WRONG_SECRET not in str(e.value)


@pytest.mark.parametrize(
    "options",
    [
        {"addressing_style": "sideways"},
        {"part_size": 1 << 20},
        {"endpoint_url": "ftp://host"},
        {"endpoint_url": "http://host:port"},
        {"endpoint_url": "127.0.0.1:9000"},
    ],
    ids=["addressing", "part-size", "endpoint-scheme", "endpoint-port", "endpoint-no-scheme"],
)
def test_bad_options(options):
    with pytest.raises(ConfigError):
        S3Backend("s3://bucket/x", **options)
