"""Fixtures of the admin tests (fsck, replication, drills, disaster recovery): real S3 servers.

moto's ThreadedMotoServer (in this process) holds the warm and cold tiers; ``rclone serve s3``
(a subprocess, another endpoint: a second failure domain) holds the replicas. The helpers are
those of the tier and backend suites.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tiers"))  # tier_helpers
sys.path.insert(0, str(HERE.parent / "backends"))  # s3_servers
sys.path.insert(0, str(HERE.parent / "component"))  # component_helpers

from s3_fixtures import aws_env, cli_env, moto_server, rclone_server  # noqa: E402, F401 (fixtures)
