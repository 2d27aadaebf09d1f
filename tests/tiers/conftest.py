"""Fixtures of the tier tests: real S3 servers on loopback, repositories with warm/cold tiers.

The servers are those of the backend suite (``tests/backends/s3_servers.py``):
moto's ThreadedMotoServer in this process, ``rclone serve s3`` as a subprocess
that a test may stop and restart. Each repository gets its own prefix in the
shared bucket. Credentials reach boto3 only through its standard chain (the
environment, per test), isolated from ~/.aws and the metadata service.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # tier_helpers
sys.path.insert(0, str(HERE.parent / "backends"))  # s3_servers
sys.path.insert(0, str(HERE.parent / "component"))  # component_helpers

from s3_fixtures import aws_env, cli_env, moto_server, own_rclone  # noqa: E402, F401 (fixtures)
