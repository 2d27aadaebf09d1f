"""The S3 backend: packs in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, ``rclone serve s3``).

This is the only module of chunkfs that imports boto3/botocore, so every S3
quirk and every botocore exception stops here and leaves as a chunkfs error
with one line that names the bucket or object and says what to do.

Choices, and why:

- Credentials come only from boto3's standard chain (environment, profile,
  instance role). They are never arguments, never attributes of the backend,
  never part of a message: errors are built from the URL, the object name and
  the S3 error code, not from botocore's text.
- Checksums are computed and validated only when an operation requires them:
  boto3 ≥ 1.36 otherwise validates ranged GETs against whole-object checksums,
  which ``rclone serve s3`` and other S3-compatible servers get wrong.
- Two layers of retries. botocore's ``standard`` mode retries throttling
  (SlowDown, 503) and transient failures with jittered backoff within one call.
  Around it, ``_retrying`` keeps retrying a *refused or dropped connection* for
  ``retry_window`` seconds, so a call made while the endpoint restarts
  succeeds once it is back, and a dead endpoint still fails within seconds.
- S3 has no BLAKE3, so every upload stores the content's BLAKE3 in the object
  metadata (``x-amz-meta-blake3``). ``verify`` checks size and that metadata,
  and reads the content back when the metadata is missing (``rclone serve s3``
  keeps metadata in memory only) or when asked to.
- Objects in an archive storage class (GLACIER, DEEP_ARCHIVE) cannot be read
  until restored: ``restore`` asks for a temporary readable copy (RestoreObject)
  and reports from the HEAD's ``x-amz-restore`` header when it is there; a read
  of an object that is not restored fails at once with a message that says to
  run ``chunkfs thaw`` (S3 answers it with a 403 that must not read as "access
  denied", and that no retry can change).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import blake3
import boto3.session
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from chunkfs.errors import BackendUnavailable, ConfigError, CorruptData, NotFound
from chunkfs.store.backends.base import ARCHIVE_STORAGE_CLASSES, Backend, os_error

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_PART_SIZE = 5 << 20  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 << 30
READ_BLOCK = 8 << 20
FIRST_RETRY_DELAY = 0.1  # doubling up to 1 s: a restarting endpoint is seen within a second

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]$")
_ADDRESSING = ("path", "virtual", "auto")

# A refused, reset or cut-off connection: the endpoint may be restarting.
_DISCONNECTED = (EndpointConnectionError, ConnectionClosedError, ResponseStreamingError, IncompleteReadError)
_DENIED = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
}
_RESTORE_STATE = re.compile(r'ongoing-request\s*=\s*"(true|false)"')
CONDITIONAL_RETRIES = 20
"""Tries of a conditional PUT that AWS answers 409 (another conditional write of the key in flight)."""
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "ServiceUnavailable"}


class S3Backend(Backend):
    """Objects under ``s3://bucket/prefix`` on one endpoint; thread-safe (one shared client)."""

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str | None = None,
        storage_class: str | None = None,
        restore_days: int = 7,
        restore_tier: str = "Standard",
        part_size: int = 64 << 20,
        max_concurrency: int = 4,
        max_attempts: int = 5,
        connect_timeout: float = 3.0,
        read_timeout: float = 30.0,
        retry_window: float = 5.0,
    ) -> None:
        """``addressing_style`` defaults to ``path`` with an ``endpoint_url`` (MinIO, Ceph, rclone
        need it) and to ``auto`` for AWS. Files of ``part_size`` or more are uploaded in parts of
        that size, ``max_concurrency`` at a time. ``restore`` asks for copies of archived objects
        that stay readable ``restore_days`` days, retrieved at ``restore_tier`` (Expedited,
        Standard, Bulk: S3's trade of speed against price)."""
        self.bucket, self._root = _parse_url(url)
        self.url = f"s3://{self.bucket}/{self._root}".rstrip("/")
        if endpoint_url is not None:
            _check_endpoint(endpoint_url)
        self.endpoint_url = endpoint_url
        style = addressing_style or ("path" if endpoint_url else "auto")
        if style not in _ADDRESSING:
            raise ConfigError(f"{self.url}: addressing style {style!r} not in {'/'.join(_ADDRESSING)}")
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ConfigError(f"{self.url}: part size {part_size} must be between 5 MiB and 5 GiB")
        self.retry_window = retry_window
        self._extra = {"StorageClass": storage_class} if storage_class else {}
        self._restore_request = {"Days": restore_days, "GlacierJobParameters": {"Tier": restore_tier}}
        session = boto3.session.Session()  # not thread-safe: used here only, to build the client
        region = region or session.region_name or ("us-east-1" if endpoint_url else None)
        self._client = session.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                region_name=region,
                signature_version="s3v4",
                s3={"addressing_style": style},
                retries={"mode": "standard", "max_attempts": max_attempts},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_pool_connections=max(10, 4 * max_concurrency),  # two uploads at once, and reads
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self._transfer = TransferConfig(
            multipart_threshold=part_size,
            multipart_chunksize=part_size,
            max_concurrency=max_concurrency,
            preferred_transfer_client="classic",
        )
        self._bucket_seen = False

    def __repr__(self) -> str:
        return f"S3Backend({self.url!r}, endpoint={self._endpoint_name()!r})"

    # -- the Backend interface ------------------------------------------------------------------

    def put(self, name: str, data: bytes, *, standard: bool = False) -> None:
        """One PUT with Content-MD5 (the server rejects damaged bodies), then a HEAD to check it."""
        digest = blake3.blake3(data).hexdigest()
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        with self._errors(name):
            self._retrying(
                lambda: self._client.put_object(
                    Bucket=self.bucket,
                    Key=self._key(name),
                    Body=data,
                    ContentMD5=md5,
                    Metadata={"blake3": digest},
                    **({} if standard else self._extra),
                )
            )
        self._check_stored(name, len(data), digest)

    def put_file(self, name: str, path: Path, *, blake3_digest: bytes | None = None) -> None:
        """Upload a file, in parts when it is big, with its BLAKE3 in the object metadata.

        The metadata is ``blake3_digest`` when the caller passes it, else the file is hashed
        first (an extra read of the whole file). No HEAD here: every caller checks the object
        with ``verify`` next (size and that metadata), and a second HEAD would only repeat it.
        An upload that fails is aborted by s3transfer; one cut off with the endpoint can leave
        parts behind, which a bucket lifecycle rule (AbortIncompleteMultipartUpload) removes.
        """
        try:
            if blake3_digest is None:
                _size, digest = _hash_file(path)
            else:
                digest = blake3_digest.hex()
        except OSError as e:
            raise os_error(e, str(path)) from None
        extra = {"Metadata": {"blake3": digest}, **self._extra}

        def upload() -> None:
            with create_transfer_manager(self._client, self._transfer) as transfers:
                transfers.upload(str(path), self.bucket, self._key(name), extra_args=extra).result()

        with self._errors(name):
            self._retrying(upload)

    def put_new(self, name: str, data: bytes) -> bool:
        """``PUT`` with ``If-None-Match: *``: 412 means another writer created ``name`` first.
        A 409 (AWS: a conditional write racing another on the same key) is retried."""

        def put() -> bool:
            for _ in range(CONDITIONAL_RETRIES):
                try:
                    self._client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data, IfNoneMatch="*")
                    return True
                except ClientError as e:
                    if _status(e) == 412 or _code(e) == "PreconditionFailed":
                        return False
                    if _status(e) != 409:
                        raise
                    time.sleep(0.05)
            raise BackendUnavailable(f"{self._where(name)}: conditional writes keep conflicting; try again later")

        with self._errors(name):
            return self._retrying(put)

    def get(self, name: str) -> bytes:
        with self._errors(name):
            return self._retrying(
                lambda: self._client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
            )

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)``; fewer at the end of the object, like ``pread``."""
        if offset < 0 or length < 0:
            raise ValueError(f"bad range: offset {offset}, length {length}")
        if length == 0:
            self.size(name)  # an empty range still requires the object to exist
            return b""

        def fetch() -> bytes:
            response = self._client.get_object(
                Bucket=self.bucket, Key=self._key(name), Range=f"bytes={offset}-{offset + length - 1}"
            )
            data = response["Body"].read()
            if "ContentRange" not in response:  # a server that ignored Range sent the whole object
                data = data[offset : offset + length]
            return data

        with self._errors(name):
            try:
                return self._retrying(fetch)
            except ClientError as e:
                if _code(e) != "InvalidRange":
                    raise
                self.size(name)  # 416: the range starts at or after the end
                return b""

    def size(self, name: str) -> int:
        head = self._head(name)
        if head is None:
            raise NotFound(f"{self._where(name)}: missing")
        return head["ContentLength"]

    def exists(self, name: str) -> bool:
        return self._head(name) is not None

    def list(self, prefix: str = "") -> Iterator[str]:
        params = {"Bucket": self.bucket, "Prefix": self._key(prefix)}
        while True:
            with self._errors(prefix + "*"):
                page = self._retrying(lambda: self._client.list_objects_v2(**params))
            for obj in page.get("Contents", ()):
                yield obj["Key"][len(self._root) :]
            if not page.get("IsTruncated"):
                return
            params["ContinuationToken"] = page["NextContinuationToken"]

    def _delete(self, name: str) -> None:
        with self._errors(name):
            try:
                self._retrying(lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(name)))
            except ClientError as e:
                if _code(e) != "NoSuchKey":  # S3 answers 204; a few compatible servers say NoSuchKey
                    raise

    # -- archive storage classes ----------------------------------------------------------------

    def restore(self, name: str) -> bool:
        """Whether the object can be read now; if it is archived and no restore was asked for,
        ask for one (``chunkfs thaw`` calls this for every pack until all say True).

        One HEAD tells: a storage class that is no archive (GLACIER_IR, STANDARD…) is readable
        as it is; an ``x-amz-restore`` header says a restore was requested and whether it is
        done (``ongoing-request="false"``). Without one, a RestoreObject asks for a copy
        readable ``restore_days`` days; another process that asked first
        (RestoreAlreadyInProgress) is as good as our request.
        """
        head = self._head(name)
        if head is None:
            raise NotFound(f"{self._where(name)}: missing")
        if head.get("StorageClass") not in ARCHIVE_STORAGE_CLASSES:
            return True
        if (state := restore_state(head.get("Restore"))) is not None:
            return state
        with self._errors(name):
            try:
                self._retrying(
                    lambda: self._client.restore_object(
                        Bucket=self.bucket, Key=self._key(name), RestoreRequest=self._restore_request
                    )
                )
            except ClientError as e:
                if _code(e) != "RestoreAlreadyInProgress":
                    raise
        log.info("%s: restore from %s requested", self._where(name), head["StorageClass"])
        return False

    # -- verification ---------------------------------------------------------------------------

    def verify(self, name: str, blake3_digest: bytes, size: int, *, reread: bool = False) -> None:
        """Raise ``CorruptData`` unless the object has ``size`` bytes whose BLAKE3 is ``blake3_digest``.

        Checks size and the stored BLAKE3 metadata with one HEAD; reads the whole object back and
        hashes it when the metadata is missing or ``reread`` is set (the only check that proves
        the stored bytes themselves, since a multipart upload carries no content checksum).
        """
        head = self._head(name)
        where = self._where(name)
        if head is None:
            raise NotFound(f"{where}: missing")
        if head["ContentLength"] != size:
            raise CorruptData(f"{where}: {head['ContentLength']} bytes stored, expected {size}")
        expected, stored = blake3_digest.hex(), _stored_blake3(head)
        if stored is not None and stored != expected:
            raise CorruptData(f"{where}: stored BLAKE3 {stored[:16]}… is not {expected[:16]}…")
        if stored is None or reread:
            with self._errors(name):
                actual = self._retrying(lambda: self._hash_object(name))
            if actual != blake3_digest:
                raise CorruptData(f"{where}: content does not match BLAKE3 {expected[:16]}…")

    def _hash_object(self, name: str) -> bytes:
        hasher = blake3.blake3()
        body = self._client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
        for block in body.iter_chunks(READ_BLOCK):
            hasher.update(block)
        return hasher.digest()

    def _check_stored(self, name: str, size: int, digest: str) -> None:
        head = self._head(name)
        where = self._where(name)
        if head is None:
            raise BackendUnavailable(f"{where}: missing right after upload; the endpoint lost it, retry")
        if head["ContentLength"] != size:
            stored_size = head["ContentLength"]
            raise CorruptData(f"{where}: {stored_size} bytes stored, {size} uploaded; retry the upload")
        stored = _stored_blake3(head)
        if stored is not None and stored != digest:
            raise CorruptData(f"{where}: BLAKE3 metadata differs from the upload's; retry the upload")

    # -- plumbing -------------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return self._root + name

    def _where(self, name: str) -> str:
        return f"{self.url}/{name}"

    def _endpoint_name(self) -> str:
        return self.endpoint_url or "AWS S3"

    def _head(self, name: str) -> dict | None:
        """HEAD of the object, None if it is missing; a missing bucket raises ``NotFound``."""
        with self._errors(name):
            try:
                return self._retrying(
                    lambda: self._client.head_object(Bucket=self.bucket, Key=self._key(name))
                )
            except ClientError as e:
                if _status(e) != 404:
                    raise
            self._require_bucket()
        return None

    def _require_bucket(self) -> None:
        """A HEAD's 404 has no body to tell a missing key from a missing bucket: ask once."""
        if not self._bucket_seen:
            self._retrying(lambda: self._client.list_objects_v2(Bucket=self.bucket, MaxKeys=1))
            self._bucket_seen = True

    def _retrying(self, call: Callable[[], T]) -> T:
        """Run ``call``, retrying a refused or dropped connection for ``retry_window`` seconds."""
        deadline = time.monotonic() + self.retry_window
        delay = FIRST_RETRY_DELAY
        while True:
            try:
                return call()
            except _DISCONNECTED as e:
                if time.monotonic() + delay > deadline:
                    raise
                if delay == FIRST_RETRY_DELAY:
                    log.warning(
                        "%s: %s; retrying for up to %.0fs",
                        self._endpoint_name(), type(e).__name__, self.retry_window,
                    )  # fmt: skip
                time.sleep(delay)
                delay = min(2 * delay, 1.0)

    @contextmanager
    def _errors(self, name: str) -> Iterator[None]:
        """Turn botocore's exceptions into chunkfs errors naming ``name``."""
        try:
            yield
        except ClientError as e:
            raise self._client_error(e, name) from None
        except BotoCoreError as e:
            raise self._transport_error(e, name) from None

    def _client_error(self, e: ClientError, name: str) -> Exception:
        code, status, where = _code(e), _status(e), self._where(name)
        if code == "NoSuchBucket":
            return NotFound(f"s3://{self.bucket}: bucket does not exist; create it or fix the URL")
        if code == "NoSuchKey" or status == 404:
            return NotFound(f"{where}: missing")
        if code == "InvalidObjectState":  # a 403, but no retry and no credential changes it
            return BackendUnavailable(
                f"{where}: archived in an S3 archive storage class and not restored; "
                f"run `chunkfs thaw PATH` on the run that holds it"
            )
        if code in _DENIED or status == 403:
            return BackendUnavailable(
                f"{where}: access denied ({code}); check the credentials (AWS_ACCESS_KEY_ID, "
                f"AWS_PROFILE) and the bucket policy"
            )
        if code in _THROTTLED or status == 503:
            return BackendUnavailable(
                f"{where}: {self._endpoint_name()} is overloaded ({code}); try again later"
            )
        return BackendUnavailable(f"{where}: S3 error {code} (HTTP {status})")

    def _transport_error(self, e: BotoCoreError, name: str) -> Exception:
        where = self._where(name)
        if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
            return BackendUnavailable(
                f"{where}: no S3 credentials found; "
                f"set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            )
        if isinstance(e, (BotoConnectionError, HTTPClientError, IncompleteReadError)):
            return BackendUnavailable(
                f"{where}: endpoint {self._endpoint_name()} unreachable ({type(e).__name__}); "
                f"check that it is running and the endpoint URL"
            )
        return BackendUnavailable(f"{where}: S3 client error ({type(e).__name__})")


def _parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` → (``bucket``, ``a/b/``); the prefix is '' or ends with '/'."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigError(f"{_redact(url)}: not an S3 URL of the form s3://bucket/prefix")
    if not _BUCKET_RE.match(parts.netloc):
        raise ConfigError(f"{url}: {parts.netloc!r} is not a valid bucket name (3-63 of a-z 0-9 . - _)")
    prefix = parts.path.strip("/")
    if prefix and any(seg in ("", ".", "..") for seg in prefix.split("/")):
        raise ConfigError(f"{url}: the prefix must not contain empty, '.' or '..' segments")
    return parts.netloc, prefix + "/" if prefix else ""


def _check_endpoint(endpoint_url: str) -> None:
    """Refuse a malformed endpoint, or one carrying credentials (they would end up in messages)."""
    if "@" in endpoint_url:
        raise ConfigError(
            f"{_redact(endpoint_url)}: credentials do not belong in the endpoint URL; "
            f"use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        )
    parts = urlsplit(endpoint_url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port that is not a number
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ConfigError(f"{endpoint_url}: the endpoint URL must look like https://host[:port]")


def _redact(url: str) -> str:
    """``url`` without anything between ``//`` and the last ``@`` (a ``user:password``)."""
    return re.sub(r"//.*@", "//…@", url)


def _code(e: ClientError) -> str:
    return e.response.get("Error", {}).get("Code", "")


def _status(e: ClientError) -> int | None:
    return e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def restore_state(header: str | None) -> bool | None:
    """From an ``x-amz-restore`` header: None (no restore requested), False (in progress), True (done)."""
    if header is None:
        return None
    m = _RESTORE_STATE.search(header)
    if m is None:
        raise BackendUnavailable(f"unexpected x-amz-restore header {header!r} from the S3 endpoint")
    return m.group(1) == "false"


def _stored_blake3(head: dict) -> str | None:
    """The ``x-amz-meta-blake3`` of a HEAD; rclone returns metadata names capitalised (``Blake3``)."""
    return next((v for k, v in head.get("Metadata", {}).items() if k.lower() == "blake3"), None)


def _hash_file(path: Path) -> tuple[int, str]:
    """(size, BLAKE3 hex) of a local file, read in large blocks."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    size = 0
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            hasher.update(block)
            size += len(block)
    return size, hasher.hexdigest()
