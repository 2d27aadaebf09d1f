"""Prometheus metrics of a repository: ``start_metrics_server(addr, repo)`` for the mount daemon.

Each repository gets its own ``CollectorRegistry`` with one collector that
reads the figures at scrape time — the same ones ``chunkfs status`` prints
(``ops/status.py``), so the two never disagree. Counters are cumulative over
every process that worked on the repository (saved in the index), so they
survive daemon restarts; gauges are the state now.

Metrics (all prefixed ``chunkfs_``):

counters  ``written_bytes_total``, ``dedup_bytes_total`` (written bytes that were
          already stored), ``stored_bytes_total`` (new bytes as stored),
          ``chunks_total{kind=new|reused}``, ``read_bytes_total``,
          ``read_cache_requests_total{result=hit|miss}`` (the disk read cache),
          ``remote_read_bytes_total{tier}``, ``remote_requests_total``,
          ``uploaded_packs_total``, ``uploaded_bytes_total``,
          ``tier_moves_total{from,to}``, ``tier_moved_bytes_total{from,to}``
gauges    ``upload_backlog_packs``, ``upload_backlog_bytes``,
          ``upload_backlog_oldest_age_seconds``, ``upload_failing`` (0/1),
          ``tier_bytes{tier}``, ``tier_packs{tier}``, ``tier_copy_bytes{tier}``,
          ``read_cache_bytes``, ``read_cache_limit_bytes``, ``tier_moves_in_flight``
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from chunkfs.errors import ChunkfsError, Conflict, UsageError
from chunkfs.ops import status as statusop
from chunkfs.repo import Repository

log = logging.getLogger(__name__)

_MOVE = re.compile(r"^moved_(packs|bytes)_(hot|warm|cold)_(hot|warm|cold)$")
_REMOTE = re.compile(r"^remote_read_bytes_(warm|cold)$")


class RepositoryCollector(Collector):
    """Reads a repository's figures at each scrape."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._lock = threading.Lock()  # scrapes may overlap; the figures are read one at a time

    def collect(self):
        with self._lock:
            try:
                s = statusop.status(self.repo)
            except ChunkfsError as e:
                log.warning("metrics: cannot read the repository's figures: %s", e)
                return
        yield from families(s)


def families(s: statusop.Status):
    """The metric families of a ``Status``."""
    a = s.activity

    def counter(name: str, doc: str, key: str) -> CounterMetricFamily:
        return CounterMetricFamily(f"chunkfs_{name}", doc, value=a.get(key, 0))

    yield counter("written_bytes", "Bytes written to files (before dedup).", "written_bytes")
    yield counter("dedup_bytes", "Written bytes that were already stored (deduplicated).", "dedup_bytes")
    yield counter("stored_bytes", "New chunk bytes as stored (after compression).", "stored_bytes")
    yield counter("read_bytes", "Bytes of file content read.", "read_bytes")
    yield counter("remote_requests", "Ranged GETs to the warm and cold tiers.", "remote_requests")
    yield counter("uploaded_packs", "Packs copied to the warm tier by write-back.", "uploaded_packs")
    yield counter("uploaded_bytes", "Bytes copied to the warm tier by write-back.", "uploaded_bytes")
    chunks = CounterMetricFamily("chunkfs_chunks", "Chunks written, new or reused (dedup).", labels=["kind"])
    chunks.add_metric(["new"], a.get("new_chunks", 0))
    chunks.add_metric(["reused"], a.get("reused_chunks", 0))
    yield chunks
    cache = CounterMetricFamily("chunkfs_read_cache_requests", "Disk read cache lookups.", labels=["result"])
    cache.add_metric(["hit"], a.get("read_cache_hits", 0))
    cache.add_metric(["miss"], a.get("read_cache_misses", 0))
    yield cache
    remote = CounterMetricFamily("chunkfs_remote_read_bytes", "Bytes fetched from a remote tier.", labels=["tier"])
    moves = CounterMetricFamily("chunkfs_tier_moves", "Packs moved between tiers.", labels=["from", "to"])
    moved = CounterMetricFamily("chunkfs_tier_moved_bytes", "Bytes of packs moved between tiers.", labels=["from", "to"])
    for key, value in sorted(a.items()):
        if m := _REMOTE.match(key):
            remote.add_metric([m.group(1)], value)
        elif m := _MOVE.match(key):
            (moves if m.group(1) == "packs" else moved).add_metric([m.group(2), m.group(3)], value)
    yield remote
    yield moves
    yield moved

    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"chunkfs_{name}", doc, value=value)

    b = s.upload_backlog
    yield gauge("upload_backlog_packs", "Sealed packs waiting for upload to the warm tier.", b["packs"])
    yield gauge("upload_backlog_bytes", "Bytes waiting for upload to the warm tier.", b["bytes"])
    yield gauge("upload_backlog_oldest_age_seconds", "Age of the oldest queued upload.", b["oldest_age_s"])
    yield gauge("upload_failing", "1 while the uploader's last attempt failed.", 1 if s.upload_error else 0)
    yield gauge("tier_moves_in_flight", "Tier operations started and not finished.", s.moves_in_flight)
    yield gauge("read_cache_bytes", "Bytes in the disk read cache.", s.read_cache["bytes"])
    yield gauge("read_cache_limit_bytes", "Size limit of the disk read cache.", s.read_cache["limit"])
    for name, doc, attr in (
        ("tier_bytes", "Bytes of packs whose home is the tier.", "bytes"),
        ("tier_packs", "Packs whose home is the tier.", "packs"),
        ("tier_copy_bytes", "Bytes of extra verified copies on the tier.", "copy_bytes"),
    ):
        g = GaugeMetricFamily(f"chunkfs_{name}", doc, labels=["tier"])
        for tier, usage in s.tiers.items():
            if usage.configured:
                g.add_metric([tier], getattr(usage, attr))
        yield g


def registry_for(repo: Repository) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RepositoryCollector(repo))
    return registry


@dataclass
class MetricsServer:
    address: str  # host:port actually bound
    _server: object
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def parse_address(addr: str) -> tuple[str, int]:
    """``127.0.0.1:9108``, ``[::1]:9108``, ``:9108`` (every interface) → (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"--metrics {addr}: expected HOST:PORT, e.g. 127.0.0.1:9108")
    return host.strip("[]") or "0.0.0.0", int(port)


def start_metrics_server(addr: str, repo: Repository) -> MetricsServer:
    """Serve ``repo``'s metrics over HTTP at ``addr`` (any path answers) in a daemon thread."""
    host, port = parse_address(addr)
    try:
        server, thread = start_http_server(port, host, registry_for(repo))
    except OSError as e:
        raise Conflict(f"--metrics {addr}: cannot listen there: {e.strerror or e}") from None
    bound = server.server_address
    log.info("serving metrics at http://%s:%d/metrics", bound[0], bound[1])
    return MetricsServer(f"{bound[0]}:{bound[1]}", server, thread)
