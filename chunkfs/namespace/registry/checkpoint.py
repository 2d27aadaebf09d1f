"""One checkpoint record: the document the index stores, and the ``Checkpoint`` queries return.

The document (``keys.py``, "Registry") is ``{"path", "src", "user", "problems"}``:
what each sidecar file said (replaced whole when the file is rewritten), what
users set, and why a sidecar was (partly) skipped. The metadata a record shows
is the merge of these, user keys winning (``merged``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chunkfs.namespace.registry.sidecars import SIDECARS, Extracted
from chunkfs.namespace.registry.values import BUILTINS, is_number


def new_doc(path: str) -> dict[str, Any]:
    """The document of a checkpoint just found at ``path``: no metadata yet."""
    return {"path": path, "src": {}, "user": {}, "problems": {}}


def note_sidecar(doc: dict[str, Any], name: str, extracted: Extracted | str) -> str | None:
    """Put what sidecar file ``name`` said (``extracted``), or why it was skipped (a string),
    into ``doc``; the problem to report, if any."""
    src, problems = doc.setdefault("src", {}), doc.setdefault("problems", {})
    if isinstance(extracted, str):
        src.pop(name, None)
        problems[name] = extracted
        return f"{extracted}; skipped"
    values, issues = extracted
    src[name] = values
    if not issues:
        problems.pop(name, None)
        return None
    problems[name] = "ignored " + "; ".join(issues)
    return problems[name]


def forget_sidecar(doc: dict[str, Any], name: str) -> None:
    """Drop what sidecar file ``name`` said, and any problem with it (the file is gone)."""
    doc.get("src", {}).pop(name, None)
    doc.get("problems", {}).pop(name, None)


def set_user_value(doc: dict[str, Any], key: str, value: Any) -> None:
    """Set a user key of ``doc`` (None: remove it)."""
    user = doc.setdefault("user", {})
    if value is None:
        user.pop(key, None)
    else:
        user[key] = value


def merged(doc: dict[str, Any]) -> dict[str, Any]:
    """A record's metadata: the sidecars in ``SIDECARS`` order, then the user's keys."""
    meta: dict[str, Any] = {}
    src = doc.get("src", {})
    for name in SIDECARS:
        meta.update(src.get(name, {}))
    meta.update(doc.get("user", {}))
    return meta


def metric_value(doc: dict[str, Any], metric: str) -> float | None:
    """The record's value of ``metric`` for the metric index (None: not a finite number)."""
    v = merged(doc).get(metric)
    return float(v) if is_number(v) and math.isfinite(v) else None


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint record, as queries return it."""

    ino: int
    path: str
    fields: dict[str, str]
    step: int
    commit: int
    time_ns: int
    meta: dict[str, Any]  # everything, user keys over extracted ones
    user: dict[str, Any]
    extracted: dict[str, dict[str, Any]]  # sidecar file → its keys
    problems: dict[str, str]  # sidecar file → why (part of) it was skipped

    @classmethod
    def from_record(
        cls,
        levels: Sequence[str],
        ino: int,
        fields: Sequence[str],
        step: int,
        commit: int,
        time_ns: int,
        doc: dict[str, Any],
    ) -> Checkpoint:
        """The view of a stored record (its key, stamp and document), with fields named by level."""
        return cls(
            ino=ino,
            path=doc.get("path", ""),
            fields=dict(zip(levels, fields)),
            step=step,
            commit=commit,
            time_ns=time_ns,
            meta=merged(doc),
            user=dict(doc.get("user", {})),
            extracted={k: dict(v) for k, v in doc.get("src", {}).items()},
            problems=dict(doc.get("problems", {})),
        )

    def get(self, key: str) -> Any:
        """A field, builtin or metadata value by name (None if the record has none)."""
        if key in self.fields:
            return self.fields[key]
        if key in BUILTINS:
            return {"step": self.step, "path": self.path, "commit": self.commit, "time": self.time_ns}[key]
        return self.meta.get(key)

    def as_dict(self) -> dict[str, Any]:
        """The record as plain data (what ``--json`` prints), without the inode."""
        d = dataclasses.asdict(self)
        del d["ino"]
        return d
