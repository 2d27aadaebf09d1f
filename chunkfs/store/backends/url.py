"""Tier locations as written in config and on the command line → backends.

A location is a URL (anything with ``://``: ``s3://bucket/prefix``,
``file:///abs/path``) or a plain directory path, relative to the repository.
The S3 module is imported only when an ``s3://`` location is opened, so
repositories without a bucket never load boto3.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from chunkfs import config
from chunkfs.errors import ConfigError
from chunkfs.store.backends.base import Backend
from chunkfs.store.backends.local import LocalBackend

UPLOAD_PART_SIZE = 16 << 20
UPLOAD_CONCURRENCY = 8
"""A 128 MiB pack goes up as 8 parts at once (S3Backend's default, 64 MiB × 4, leaves a pack at 2)."""


def backend_for(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    storage_class: str | None = None,
    base: Path | None = None,
) -> Backend:
    """The backend for ``url``; a relative path is taken relative to ``base`` (if given).

    ``endpoint_url``, ``region`` and ``storage_class`` apply to ``s3://`` locations only; a
    repository passes the same ones for every tier, so local tiers ignore them.
    """
    if "://" not in url:
        path = Path(url)
        return LocalBackend(base / path if base is not None and not path.is_absolute() else path)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "s3":
        from chunkfs.store.backends.s3 import S3Backend

        return S3Backend(url, endpoint_url=endpoint_url, region=region, storage_class=storage_class)
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"{url}: a file URL names an absolute local path, like file:///srv/chunkfs")
        return LocalBackend(Path(unquote(parts.path)))
    raise ConfigError(
        f"{url}: unsupported storage URL scheme {scheme + ':'!r}; use s3://bucket/prefix, "
        f"file:///path or a directory path"
    )


def open_backend(url: str, settings: config.TierSettings, storage_class: str, base: Path) -> Backend:
    """The backend of a tier location, with the repository's S3 settings."""
    if "://" in url and urlsplit(url).scheme.lower() == "s3":
        from chunkfs.store.backends.s3 import S3Backend

        return S3Backend(
            url,
            endpoint_url=settings.endpoint_url or None,
            region=settings.region or None,
            addressing_style=settings.addressing_style or None,
            storage_class=storage_class or None,
            restore_days=settings.cold_restore_days,
            restore_tier=settings.cold_restore_tier,
            part_size=UPLOAD_PART_SIZE,
            max_concurrency=UPLOAD_CONCURRENCY,
        )
    return backend_for(url, base=base)
