"""The ``--where`` and ``--sort`` language of ``chunkfs find`` (pure).

``eval_loss<0.3 and run==r1, step>=1000``: conditions on any key a record has
(level names, builtins, metadata), all of which must hold. Values compare by
kind — numbers as numbers, strings as strings — so that a metric a sidecar
wrote as text ('nan') never passes a numeric test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chunkfs.errors import UsageError
from chunkfs.namespace.registry.checkpoint import Checkpoint
from chunkfs.namespace.registry.values import is_key, is_number, parse_value

_COND_RE = re.compile(
    r"""\s*([A-Za-z_][\w.\-]*)\s*(<=|>=|==|!=|=|<|>)\s*("(?:[^"\\]|\\.)*"|'[^']*'|[^\s,'"]+)\s*"""
)
_AND_RE = re.compile(r"(?:,|and\b)\s*", re.IGNORECASE)
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


@dataclass(frozen=True)
class Condition:
    """``key OP value`` of a ``--where`` expression."""

    key: str
    op: str
    text: str  # the value as written (quotes removed)
    value: Any  # the value parsed: a number, a boolean, or the text
    quoted: bool

    def matches(self, actual: Any) -> bool:
        """Numbers compare as numbers, strings as strings; a missing key or another kind never matches."""
        if actual is None:
            return False
        if isinstance(actual, bool):
            ok = not self.quoted and isinstance(self.value, bool) and self.op in ("==", "!=")
            return ok and _OPS[self.op](actual, self.value)
        if is_number(actual):
            return not self.quoted and is_number(self.value) and _OPS[self.op](actual, self.value)
        if isinstance(actual, str):
            if self.op not in ("==", "!=") and not self.quoted and is_number(self.value):
                return False  # 'nan' < 0.3 is no answer
            return _OPS[self.op](actual, self.text)
        return False


def parse_where(expr: str) -> list[Condition]:
    """``eval_loss<0.3 and run==r1, step>=1000`` → conditions (all must hold)."""
    conds: list[Condition] = []
    pos = 0
    while True:
        m = _COND_RE.match(expr, pos)
        if m is None:
            rest = expr[pos:].strip() or "(end)"
            raise UsageError(
                f"--where {expr!r}: expected KEY OP VALUE at {rest[:40]!r} "
                "(OP one of < <= > >= == !=; conditions joined by 'and' or ',')"
            )
        key, op, raw = m.groups()
        quoted = raw[:1] in ("'", '"')
        text = (json.loads(raw) if raw[0] == '"' else raw[1:-1]) if quoted else raw
        value = text if quoted else parse_value(raw)
        conds.append(Condition(key, "==" if op == "=" else op, text, value, quoted))
        pos = m.end()
        if pos == len(expr):
            return conds
        sep = _AND_RE.match(expr, pos)
        if sep is None:
            raise UsageError(f"--where {expr!r}: expected 'and' or ',' at {expr[pos:][:40]!r}")
        pos = sep.end()


def parse_sort(spec: str) -> list[tuple[str, bool]]:
    """``-eval_loss,step`` → [(key, descending)]."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        desc = part.startswith("-")
        key = part.lstrip("+-")
        if not is_key(key):
            raise UsageError(f"--sort {spec!r}: {key!r} is not a key name (use KEY or -KEY)")
        out.append((key, desc))
    return out


def _sort_key(v: Any) -> tuple:
    """Numbers before strings before anything else, so values of mixed kinds still sort."""
    if is_number(v):
        return (0, v, "")
    if isinstance(v, str):
        return (1, 0, v)
    return (2, 0, json.dumps(v, sort_keys=True))


def sort_records(records: list[Checkpoint], spec: str) -> list[Checkpoint]:
    """Stable sort by each key in turn; records without the key always come last."""
    out = list(records)
    for key, desc in reversed(parse_sort(spec)):
        have = [r for r in out if r.get(key) is not None]
        missing = [r for r in out if r.get(key) is None]
        have.sort(key=lambda r: _sort_key(r.get(key)), reverse=desc)
        out = have + missing
    return out
