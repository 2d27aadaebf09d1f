"""Repository settings: ``chunkfs.toml`` read with tomllib into validated dataclasses.

Each section is a frozen dataclass; each field's metadata says how to parse and
check it. Any unknown section or key, or a value of the wrong kind, is a
``ConfigError`` naming the key (``chunking.chunk_size: ...``) — one line the CLI
can print as it is.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chunkfs.errors import ConfigError
from chunkfs.types import MAX_LEVELS

CONFIG_NAME = "chunkfs.toml"

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(value: Any) -> int:
    """``4194304``, ``"4MiB"``, ``"4M"`` → bytes (binary units)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 4194304 or \"4MiB\"")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str) and (m := _SIZE_RE.match(value)):
        return int(m.group(1)) * _UNITS[m.group(2).lower()]
    raise ValueError(f"expected a size such as 4194304 or \"4MiB\", got {value!r}")


def format_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def _size(lo: int, hi: int):
    def check(value: Any) -> int:
        n = parse_size(value)
        if not lo <= n <= hi:
            raise ValueError(f"must be between {format_size(lo)} and {format_size(hi)}")
        return n

    check.is_size = True  # render() writes these as "4MiB"; plain integers stay integers
    return check


def _int(lo: int, hi: int):
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return check


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be between 0 and 1")
    return float(value)


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _setting(default: Any, check, doc: str):
    return field(default=default, metadata={"check": check, "doc": doc})


@dataclass(frozen=True)
class ChunkingSettings:
    chunk_size: int = _setting(
        4 << 20, _size(64 << 10, 64 << 20), "largest chunk; big tensors are cut into pieces of this size"
    )
    min_chunk: int = _setting(
        64 << 10, _size(1, 64 << 20), "pieces smaller than this are merged with their neighbours"
    )


@dataclass(frozen=True)
class CompressionSettings:
    level: int = _setting(3, _int(-7, 22), "zstd level used when a chunk is compressed on ingest")
    sample: int = _setting(
        64 << 10, _size(4 << 10, 64 << 20), "bytes of a chunk test-compressed to decide"
    )
    max_ratio: float = _setting(
        0.75, _fraction, "compress a chunk only if its sample shrinks to this fraction or less"
    )


@dataclass(frozen=True)
class PackSettings:
    target_size: int = _setting(
        128 << 20, _size(1 << 20, 4 << 30), "a pack is sealed once it reaches this size"
    )
    max_open: int = _setting(8, _int(1, 1024), "open packs (one per pack group) before the oldest is sealed")


def _choice(*choices: str):
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def _optional_string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> int:
    """``3600``, ``"3600"``, ``"60m"``, ``"1h"``, ``"30d"`` → seconds."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as 3600 or "1h"')
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return value
    if isinstance(value, str) and (m := _DURATION_RE.match(value)):
        return int(m.group(1)) * _SECONDS[m.group(2)]
    raise ValueError(f'expected a duration such as 3600, "30m", "1h" or "30d", got {value!r}')


def _duration(value: Any) -> int:
    return parse_duration(value)


def _processes(value: Any) -> int | str:
    if value == "auto":
        return value
    return _int(0, 256)(value)


@dataclass(frozen=True)
class WriterSettings:
    processes: int | str = _setting(
        "auto", _processes,
        'engine worker processes of a mount: they chunk, hash, compress and store what is written '
        '("auto": one per CPU, at most 8; 0: all of it in the daemon\'s own process)',
    )  # fmt: skip
    handoff: int = _setting(
        128 << 20, _size(4 << 20, 4 << 30),
        "shared memory of a mount for written bytes its worker processes have not taken yet, split between "
        "them (at least 4 MiB each); a writer waits while its worker's share is full",
    )  # fmt: skip

    def count(self, cpus: int | None) -> int:
        """How many worker processes: ``processes``, with "auto" resolved for ``cpus`` CPUs."""
        return min(cpus or 1, 8) if self.processes == "auto" else int(self.processes)


@dataclass(frozen=True)
class TierSettings:
    hot: str = _setting("hot", _string, "directory of the hot tier (relative to the repository)")
    warm: str = _setting(
        "", _optional_string, 'warm tier: "s3://bucket/prefix" or a directory; "" for none (docs/tiers.md)'
    )
    cold: str = _setting(
        "", _optional_string, 'cold tier: "s3://bucket/prefix" or a directory (NFS); "" for none'
    )
    endpoint_url: str = _setting(
        "", _optional_string, 'S3 endpoint (MinIO, Ceph: "https://host:9000"); "" for AWS S3'
    )
    region: str = _setting("", _optional_string, 'S3 region; "" for the credential chain\'s default')
    addressing_style: str = _setting(
        "", _choice("", "path", "virtual", "auto"), 'S3 addressing: path, virtual, auto; "" picks for the endpoint'
    )
    warm_storage_class: str = _setting("", _optional_string, 'S3 storage class of warm packs ("" default)')
    cold_storage_class: str = _setting(
        "", _optional_string, 'S3 storage class of cold packs, e.g. "GLACIER_IR" or "DEEP_ARCHIVE"'
    )
    cold_archive: bool = _setting(
        False, _bool, "cold packs must be restored before reading: reads need `chunkfs thaw PATH`"
    )
    cold_restore_days: int = _setting(
        7, _int(1, 365), "days a restored copy of an archived cold pack stays readable (`chunkfs thaw`)"
    )
    cold_restore_tier: str = _setting(
        "Standard", _choice("Expedited", "Standard", "Bulk"),
        "S3 retrieval tier of those restores: Expedited, Standard or Bulk (slower, cheaper)",
    )


@dataclass(frozen=True)
class CacheSettings:
    memory: int = _setting(
        128 << 20, _size(0, 64 << 30), "in-memory cache of decoded chunks, per process"
    )
    disk: int = _setting(
        10 << 30, _size(0, 1 << 50), "local disk cache of chunks read from warm/cold (0: none); LRU, pins kept"
    )
    dir: str = _setting("cache", _string, "directory of the disk cache (relative to the repository)")
    prefetch: int = _setting(
        64 << 20, _size(0, 4 << 30), "sequential reads of warm/cold data fetch this far ahead (0: off)"
    )
    fetch_threads: int = _setting(4, _int(1, 64), "parallel ranged GETs for read-ahead and prefetch")


@dataclass(frozen=True)
class LifecycleSettings:
    run_idle: int = _setting(
        3600, _duration, 'a run with no new data for this long is complete ("1h"; 0: only `chunkfs run complete`)'
    )
    cold_after_days: int = _setting(60, _int(0, 36500), "warm packs older than this go cold (0: never)")
    cold_idle_days: int = _setting(30, _int(0, 36500), "... and only once the run was not read for this long")
    cold_level: int = _setting(
        9, _int(1, 22), "zstd level of cold packs (chunks that do not shrink stay as they are; docs/tiers.md)"
    )
    warm_level: int = _setting(
        3, _int(0, 22), "zstd level of a complete run's packs, re-encoded on their way to warm (0: moved as they are)"
    )
    delta_chain: int = _setting(
        8, _int(0, 32),
        "a re-encoded run's checkpoints stored as deltas of the next one, every Nth from the newest whole "
        "(0 or 1: no deltas; docs/tiers.md)",
    )
    interval: int = _setting(
        600, _duration, "how often a mount applies the policies (seals idle runs, moves packs; 0: never)"
    )
    seal_quiet: int = _setting(
        60, _duration, "a complete run's open pack is sealed once no write touched it for this long"
    )
    hot_min_free: int = _setting(
        10, _int(0, 90), "percent of the hot disk kept free: below it, hot packs with a warm copy leave early (0: off)"
    )


_LEVEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _levels(value: Any) -> str:
    """``["model", "base", "adapter", "run"]`` or ``"model/base/adapter/run"`` → the latter."""
    names = value.split("/") if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f'expected a list of level names such as ["model", "run"], got {value!r}')
    for n in names:
        if not _LEVEL_RE.match(n) or n in ("step", "path", "commit", "time"):
            raise ValueError(f"{n!r} is not a usable level name (letters, digits, _; not a builtin key)")
    if len(set(names)) != len(names):
        raise ValueError("level names must be distinct")
    if len(names) > MAX_LEVELS:
        raise ValueError(f"at most {MAX_LEVELS} levels (a checkpoint key must fit an index key)")
    return "/".join(names)


def _step_pattern(value: Any) -> str:
    value = _string(value)
    try:
        pattern = re.compile(value)
    except re.error as e:
        raise ValueError(f"not a regular expression: {e}") from None
    if pattern.groups > 1:
        raise ValueError("at most one group (the step number)")
    return value


@dataclass(frozen=True)
class RegistrySettings:
    levels: str = _setting(
        "model/base/adapter/run",
        _levels,
        "names of the directory levels above a checkpoint's step directory (a list or 'a/b/c')",
    )
    step_pattern: str = _setting(
        r"(\d+)$",
        _step_pattern,
        "a directory whose name matches this is a checkpoint; the step is its group (or the match)",
    )
    best_metric: str = _setting("eval_loss", _string, "the metric @best and `find` rank checkpoints by")
    best_mode: str = _setting(
        "min", _choice("min", "max"), "whether the best checkpoint has the min or max metric"
    )

    @property
    def level_names(self) -> tuple[str, ...]:
        return tuple(self.levels.split("/"))


def _locations(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f'expected a list of locations such as ["s3://bucket2/prefix"], got {value!r}')
    if len(set(value)) != len(value):
        raise ValueError("a replica is listed twice")
    return tuple(value)


@dataclass(frozen=True)
class ReplicationSettings:
    replicas: tuple = _setting(
        (), _locations, 'second failure domains: ["s3://other-bucket/prefix", "/mnt/nfs/replica"] (docs/operations.md)'
    )
    endpoint_url: str = _setting(
        "", _optional_string, 'S3 endpoint of s3:// replicas ("": the tiers\' endpoint_url)'
    )
    cold: bool = _setting(False, _bool, "also replicate packs whose home is the cold tier")
    interval: int = _setting(30, _duration, "how often a mount looks for packs to replicate (0: never)")


@dataclass(frozen=True)
class BackupSettings:
    interval: int = _setting(
        60, _duration, "how often a mount backs up the index to the warm tier and replicas (0: never)"
    )
    keep: int = _setting(10, _int(1, 10000), "metadata backups kept on each location (older are deleted)")


@dataclass(frozen=True)
class ClusterSettings:
    publish_on_fsync: bool = _setting(
        False, _bool,
        "a repository shared by several nodes: fsync of a file through the mount returns once its change is "
        "published to the shared log, so it survives the loss of this node (docs/multinode.md)",
    )
    publish_timeout: int = _setting(
        60, _duration, "how long such an fsync waits for the publish before it fails with EIO (store unreachable)"
    )


def positive_count(name: str, text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name}: expected a whole number ≥ 1, got {text!r}")
    return int(text)


def parse_keep_best(text: str) -> tuple[str, int, str]:
    """``eval_loss:3`` / ``eval_loss:3:min`` / ``accuracy:2:max`` → (metric, n, order)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].isdigit() or int(parts[1]) < 1:
        raise ValueError(f"keep_best: expected METRIC:N[:min|max] such as eval_loss:3, got {text!r}")
    order = parts[2] if len(parts) == 3 else "min"
    if order not in ("min", "max"):
        raise ValueError(f"keep_best: the order is min or max, got {order!r}")
    return parts[0], int(parts[1]), order


def parse_retention_rule(text: str) -> dict[str, Any]:
    """``"/llama/* keep_last=2 keep_best=eval_loss:3 keep_within=7d"`` → the fields of
    ``ops.retention.Rule`` (ValueError when malformed; docs/gc.md, "Policies")."""
    words = text.split()
    if not words or "=" in words[0]:
        raise ValueError(f"a retention rule starts with a path pattern, got {text!r}")
    values: dict[str, Any] = {"pattern": words[0]}
    for word in words[1:]:
        name, _, value = word.partition("=")
        if name in ("keep_last", "keep_every"):
            values[name] = positive_count(name, value)
        elif name == "keep_best":
            values[name] = parse_keep_best(value)
        elif name == "keep_within":
            values[name] = parse_duration(value)
        else:
            raise ValueError(f"unknown retention setting {name!r} (keep_last, keep_every, keep_best, keep_within)")
    if len(values) == 1:
        raise ValueError(f"the rule {text!r} keeps nothing; give keep_last, keep_every, keep_best or keep_within")
    return values


def _retention_rules(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError('expected a list of rules such as ["/llama/* keep_last=2 keep_within=7d"]')
    for v in value:
        parse_retention_rule(v)
    return tuple(value)


@dataclass(frozen=True)
class RetentionSettings:
    rules: tuple = _setting(
        (), _retention_rules,
        'retention rules, first match by path pattern wins: "PATTERN keep_last=N keep_every=K '
        'keep_best=METRIC:N[:min|max] keep_within=DURATION" (docs/gc.md); none: gc keeps every version',
    )  # fmt: skip


@dataclass(frozen=True)
class GcSettings:
    repack_below: float = _setting(
        0.5, _fraction, "gc repacks a sealed pack whose live bytes are under this fraction of its size"
    )
    grace: int = _setting(
        600, _duration, "gc deletes a condemned chunk's bytes only this long after it was condemned"
    )
    orphan_age: int = _setting(
        3600, _duration, "a pack object or scratch file the index does not know is deleted once this old"
    )


@dataclass(frozen=True)
class Settings:
    chunking: ChunkingSettings = field(default_factory=ChunkingSettings)
    compression: CompressionSettings = field(default_factory=CompressionSettings)
    packs: PackSettings = field(default_factory=PackSettings)
    writers: WriterSettings = field(default_factory=WriterSettings)
    tiers: TierSettings = field(default_factory=TierSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    lifecycle: LifecycleSettings = field(default_factory=LifecycleSettings)
    replication: ReplicationSettings = field(default_factory=ReplicationSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    gc: GcSettings = field(default_factory=GcSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)


def parse(document: dict[str, Any], source: str = CONFIG_NAME) -> Settings:
    """Validate a parsed TOML document into ``Settings``."""
    sections = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    for name, table in document.items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown section [{name}] (known: {', '.join(sections)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {name} must be a table ([{name}])")
        values[name] = _parse_section(sections[name].default_factory, name, table, source)
    settings = Settings(**values)
    if settings.chunking.min_chunk > settings.chunking.chunk_size:
        raise ConfigError(f"{source}: chunking.min_chunk must not exceed chunking.chunk_size")
    if settings.tiers.cold_archive and not settings.tiers.cold:
        raise ConfigError(f"{source}: tiers.cold_archive is set but tiers.cold names no cold tier")
    return settings


def _parse_section(cls, name: str, table: dict[str, Any], source: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown key {name}.{key} (known: {', '.join(known)})")
        try:
            values[key] = known[key].metadata["check"](value)
        except ValueError as e:
            raise ConfigError(f"{source}: {name}.{key}: {e}") from None
    return cls(**values)


def parse_text(text: str, source: str = CONFIG_NAME) -> Settings:
    """Validate the text of a config file."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    return parse(document, source)


def load(path: Path) -> Settings:
    """Read and validate a config file."""
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; is this a chunkfs repository?") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse(document, str(path))


def _toml_string(value: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""

    def escape(c: str) -> str:
        if ord(c) < 0x20 or ord(c) == 0x7F:
            return f"\\u{ord(c):04x}"
        return "\\" + c if c in '"\\' else c

    return '"' + "".join(map(escape, value)) + '"'


def render(settings: Settings) -> str:
    """The TOML text of ``settings``, every key with its meaning as a comment."""
    lines = ["# chunkfs repository settings; every key is optional (defaults shown).", ""]
    for section in dataclasses.fields(settings):
        lines.append(f"[{section.name}]")
        values = getattr(settings, section.name)
        for f in dataclasses.fields(values):
            value = getattr(values, f.name)
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = _toml_string(value)
            elif isinstance(value, tuple):
                text = "[" + ", ".join(_toml_string(v) for v in value) + "]"
            elif getattr(f.metadata["check"], "is_size", False) and format_size(value) != str(value):
                text = f'"{format_size(value)}"'
            else:
                text = repr(value)
            lines.append(f"# {f.metadata['doc']}")
            lines.append(f"{f.name} = {text}")
        lines.append("")
    return "\n".join(lines)
