"""Which index range scans answer a query: level filters → groups → records (reads only).

The ``ckpts`` keys sort by level fields, then step (``keys.py``, "Registry"), so
leading level values are a prefix scan, a run alone is a scan of ``ckpt_run``,
the newest record of a group is the last key of its range and the best one the
first or last key of its ``ckpt_metric`` range. Everything here takes an open
transaction and never walks the tree.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from chunkfs.errors import UsageError
from chunkfs.index import Txn
from chunkfs.namespace.registry.checkpoint import metric_value
from chunkfs.namespace.registry.keypath import dir_prefixes

Group = tuple[str, ...]
"""The full level fields of one run: the records that differ only in step and inode."""
Key = tuple[Group, int, int]
"""(fields, step, inode): where one record is."""
Row = tuple
"""(fields, step, inode, commit, time ns, metric, document) of one record."""
Target = str | Mapping[str, str] | Sequence[str]
"""Where ``latest``/``best`` look: a directory path, level name → value, or the leading level values."""


def level_filters(levels: Sequence[str], fields: Mapping[str, str | None]) -> dict[int, str]:
    """Level name → value (None: any) as level position → value; an unknown name is a usage error."""
    flt = {}
    for name, value in fields.items():
        if name not in levels:
            raise UsageError(f"no level named {name!r} in this repository (levels: {', '.join(levels)})")
        if value is not None:
            flt[levels.index(name)] = value
    return flt


def _leading(levels: Sequence[str], flt: Mapping[int, str]) -> tuple[str, ...]:
    """The filter values of the first levels up to the first one without a filter: a key prefix."""
    lead = []
    for i in range(len(levels)):
        if i not in flt:
            break
        lead.append(flt[i])
    return tuple(lead)


def groups(t: Txn, levels: Sequence[str], flt: Mapping[int, str]) -> Iterator[Group]:
    """Every group (run) matching level filters, by the cheapest index."""
    lead = _leading(levels, flt)
    last = len(levels) - 1
    if lead:
        found = t.ckpt_groups(lead)
    elif last in flt:
        found = t.ckpt_run_groups(flt[last])
    else:
        found = t.ckpt_groups(())
    for g in found:
        if all(g[i] == v for i, v in flt.items()):
            yield g


def rows(t: Txn, levels: Sequence[str], flt: Mapping[int, str]) -> Iterator[Row]:
    """Every record matching level filters: a range scan of ``ckpts`` (by leading levels) or of
    ``ckpt_run``."""
    lead = _leading(levels, flt)
    last = len(levels) - 1
    if not lead and last in flt:
        found: Iterable[Row] = with_records(t, t.ckpt_run_scan(flt[last]))
    else:
        found = t.ckpt_rows(lead)
    for row in found:
        if all(row[0][i] == v for i, v in flt.items()):
            yield row


def with_records(t: Txn, keys: Iterable[Key]) -> Iterator[Row]:
    """The rows of the records under ``keys`` (a key without a record is skipped)."""
    for fields, step, ino in keys:
        got = t.ckpt_record(fields, step, ino)
        if got is not None:
            yield (fields, step, ino, *got)


def candidate_rows(
    t: Txn, levels: Sequence[str], flt: Mapping[int, str], *, step: int | None = None, newest: bool = False
) -> Iterable[Row]:
    """The records matching level filters that a query has to look at: those at ``step``, only
    the newest one (``newest``), or all of them."""
    if step is not None:
        keys = ((g, step, ino) for g in groups(t, levels, flt) for ino in t.ckpt_at_step(g, step))
        return with_records(t, keys)
    if newest:
        key = newest_key(t, groups(t, levels, flt))
        return with_records(t, [key] if key is not None else [])
    return rows(t, levels, flt)


def target_groups(t: Txn, levels: Sequence[str], target: Target) -> list[Group]:
    """The groups below a directory path, matching level name → value, or under leading values."""
    if isinstance(target, str):
        return [
            g
            for prefix, open_last, _ in dir_prefixes(target, levels)
            for g in t.ckpt_groups(prefix, open_last=open_last)
        ]
    if isinstance(target, Mapping):
        return list(groups(t, levels, level_filters(levels, target)))
    return list(t.ckpt_groups(tuple(target)))


def newest_key(t: Txn, among: Iterable[Group]) -> Key | None:
    """The newest record of the groups: by step, then time of last change (then commit, inode)."""
    best = None
    for g in among:
        for step, ino, commit, time_ns in t.ckpt_newest(g):
            cand = (step, time_ns, commit, ino)
            if best is None or cand > best[0]:
                best = (cand, g)
    return None if best is None else (best[1], best[0][0], best[0][3])


def best_key(t: Txn, among: Iterable[Group], *, largest: bool, read_metric: str | None = None) -> Key | None:
    """The record of the groups with the smallest (``largest``: largest) metric; ties: the later
    step. ``read_metric``: take that metric from the records themselves, because the metric
    index holds another one until the next write rebuilds it."""
    best = None
    for g in among:
        if read_metric is None:
            end = t.ckpt_metric_end(g, largest=largest)
            ends = [end] if end is not None else []
        else:
            metrics = ((metric_value(row[-1], read_metric), row[1], row[2]) for row in t.ckpt_rows(g))
            ends = [m for m in metrics if m[0] is not None]
        for metric, step, ino in ends:
            cand = (metric if largest else -metric, step, ino)
            if best is None or cand > best[0]:
                best = (cand, g)
    return None if best is None else (best[1], best[0][1], best[0][2])


def path_at(t: Txn, key: Key | None) -> str | None:
    """The path of the record under ``key`` (None: no key, or no record there)."""
    if key is None:
        return None
    got = t.ckpt_record(*key)
    return got[-1].get("path") if got is not None else None
