"""Fixtures of the admin tests (fsck, replication, drills, disaster recovery): real S3 servers.

moto's ThreadedMotoServer (in this process) holds the warm and cold tiers; ``rclone serve s3``
(a subprocess, another endpoint: a second failure domain) holds the replicas. The helpers are
helpers/admin.py and those of the tier suite (helpers/tiers.py).
"""

from __future__ import annotations

from helpers.s3fixtures import aws_env, moto_server, rclone_server  # noqa: F401 (fixtures)
