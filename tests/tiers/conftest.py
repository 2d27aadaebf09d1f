"""Fixtures of the tier tests: real S3 servers on loopback, repositories with warm/cold tiers.

The servers are those of the backend suite (``helpers/s3servers.py``): moto's
ThreadedMotoServer in this process, ``rclone serve s3`` as a subprocess that a test may stop
and restart. Each repository gets its own prefix in the shared bucket. Credentials reach boto3
only through its standard chain (the environment, per test: ``aws_env``), isolated from ~/.aws
and the metadata service.
"""

from __future__ import annotations

from helpers.s3fixtures import aws_env, moto_server, own_rclone  # noqa: F401 (fixtures)
