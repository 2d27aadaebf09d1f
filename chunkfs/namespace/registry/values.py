"""Metadata keys and values: what a key may be named, how text becomes a value (pure).

Shared by the sidecar extractors, the ``--where``/``--sort`` language and the
registry itself, so that every source of metadata obeys the same rules: a key
the query language can name, values that are JSON-safe scalars or flat lists.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from chunkfs.errors import InvalidArgument

BUILTINS = ("step", "path", "commit", "time")
"""Keys every record has besides its level names; metadata cannot use them."""

_KEY_RE = re.compile(r"[A-Za-z_][\w.\-]{0,127}\Z")
_INT_RE = re.compile(r"[+-]?\d+\Z")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?\Z")


def is_key(name: str) -> bool:
    """Whether ``name`` is a key the ``--where`` language can name."""
    return _KEY_RE.match(name) is not None


def is_number(v: Any) -> bool:
    """An int or float, but not a bool (which Python counts as an int)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool))


def is_flat(v: Any) -> bool:
    """A value metadata can hold: a string, number or boolean, or a list of them."""
    return _is_scalar(v) or (isinstance(v, list) and all(_is_scalar(x) for x in v))


def json_safe(v: Any) -> Any:
    """JSON-safe: non-finite floats become their text ('nan'), so they never compare as numbers."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, list):
        return [json_safe(x) for x in v]
    return v


def parse_value(text: str) -> Any:
    """A metadata value from text: integers and decimals become numbers, true/false booleans."""
    t = text.strip()
    if _INT_RE.match(t):
        return int(t)
    if _FLOAT_RE.match(t):
        x = float(t)
        return x if math.isfinite(x) else t
    if t in ("true", "false"):
        return t == "true"
    return t


def value_text(value: Any) -> str:
    """The text form of a metadata value (what an xattr holds)."""
    return value if isinstance(value, str) else json.dumps(value)


def check_key(key: str, levels: Sequence[str]) -> str:
    """A user metadata key, validated (the ``--where`` language must be able to name it)."""
    if not is_key(key):
        raise InvalidArgument(
            f"{key!r}: not a usable metadata key (a letter or _, then letters, digits, _ . -; at most 128)"
        )
    if key in BUILTINS or key in levels:
        raise InvalidArgument(f"{key!r}: reserved (every record has it); choose another name")
    return key
