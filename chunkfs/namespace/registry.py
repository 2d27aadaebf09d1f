"""Checkpoint records: the model registry on the composite key (docs/registry.md).

A *checkpoint directory* is a directory whose name matches ``registry.step_pattern``
(by default: ends in a number, so ``checkpoint-1500``, ``step_1500`` and
``global_step1500`` are all step 1500) and that has at least one directory above
it. The directories above it are the levels of the composite key
(``registry.levels``, by default ``model/base/adapter/run``), mapped by
``fields_of``: the last one is the run, the others fill the levels from the
left, a path with more directories than levels joins the extra leading ones
into the first level with '/' (``meta-llama/Llama-3-8B``), and levels a shorter
path lacks are ''.

Upper levels often end in numbers too (``llama3``, ``run1``, ``exp-20240501``):
a checkpoint that gets a step directory below it stops being a checkpoint — it
was a level — except that a step directory of the same step below a checkpoint
that already holds files is part of it (DeepSpeed writes the model files of
``checkpoint-500`` first, then ``checkpoint-500/global_step500``).

Each checkpoint has one record in the index (``keys.py``, "Registry"): its
path, when it last changed, and metadata from three sources — files the
training frameworks write (``SIDECARS``), ``user.chunkfs.KEY`` extended
attributes and ``chunkfs meta set`` (user keys win). The tree calls the
``on_*`` hooks inside its own write transactions, so records follow creates,
renames and removals atomically; queries (``find``, ``latest``, ``best``) are
range scans of the index, never walks of the tree.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import posixpath
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chunkfs import clock
from chunkfs.config import RegistrySettings
from chunkfs.errors import InvalidArgument, NotFound, UsageError
from chunkfs.index import Index, Txn
from chunkfs.index.keys import ROOT_INODE

log = logging.getLogger(__name__)

LATEST = "@latest"
BEST = "@best"
XATTR_PREFIX = "user.chunkfs."
MAX_SIDECAR = 16 << 20
"""Sidecar files larger than this are not read (a trainer_state.json is kilobytes to a few MB)."""

BUILTINS = ("step", "path", "commit", "time")
"""Keys every record has besides its level names; metadata cannot use them."""

_KEY_RE = re.compile(r"[A-Za-z_][\w.\-]{0,127}\Z")
_INT_RE = re.compile(r"[+-]?\d+\Z")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?\Z")
_U64_MAX = (1 << 64) - 1

Target = str | Mapping[str, str] | Sequence[str]
"""Where ``latest``/``best`` look: a directory path, level name → value, or the leading level values."""


# -- paths → composite keys (pure) ------------------------------------------------------


@dataclass(frozen=True)
class ParsedPath:
    """What a checkpoint directory's path says: its level fields and its step."""

    fields: tuple[str, ...]
    step: int


def _components(path: str) -> list[str]:
    return [c for c in path.split("/") if c]


def step_of(name: str, pattern: re.Pattern[str]) -> int | None:
    """The step a directory name stands for, or None if it is not a step directory."""
    m = pattern.search(name)
    if m is None:
        return None
    digits = m.group(1) if pattern.groups else m.group(0)
    if not digits or not digits.isdigit() or not digits.isascii():
        return None
    step = int(digits)
    return step if step <= _U64_MAX else None


def fields_of(above: Sequence[str], n: int) -> tuple[str, ...]:
    """The ``n`` level fields of the directories above a step directory.

    The last directory is the run (the last level); the others fill the levels
    from the left; extra leading directories join into the first level with
    '/'; missing levels (between the given ones and the run) are ''.
    """
    k = len(above)
    if k >= n:
        return ("/".join(above[: k - n + 1]), *above[k - n + 1 :])
    return (*above[: k - 1], *([""] * (n - k)), above[-1])


def parse_checkpoint(path: str, n: int, pattern: re.Pattern[str]) -> ParsedPath | None:
    """The fields and step of the directory at ``path`` if its name makes it a checkpoint."""
    comps = _components(path)
    if len(comps) < 2:
        return None
    step = step_of(comps[-1], pattern)
    if step is None:
        return None
    return ParsedPath(fields_of(comps[:-1], n), step)


def dir_prefixes(path: str, levels: Sequence[str]) -> list[tuple[tuple[str, ...], bool, str | None]]:
    """How the checkpoints below directory ``path`` can be keyed: (fields prefix, open, level).

    Each entry is a key prefix that selects checkpoints whose path lies below
    ``path`` (``open``: the last field only starts with the prefix, the directory
    is inside a joined first level), with the level ``path`` is in that reading.
    Together they select exactly the checkpoints below ``path``, however many
    directories their paths have.
    """
    comps = _components(path)
    d, n = len(comps), len(levels)
    if d == 0:
        return [((), False, None)]
    out: list[tuple[tuple[str, ...], bool, str | None]] = []
    for j in range(max(1, d - n + 2), d + 1):  # the first j components are the first level
        prefix = ("/".join(comps[:j]), *comps[j:])
        out.append((prefix, False, levels[len(prefix) - 1]))
    out.append((fields_of(comps, n), False, levels[-1]))  # the run directory itself
    out.append((("/".join(comps) + "/",), True, levels[0]))  # a namespace inside the first level
    seen: set[tuple[tuple[str, ...], bool]] = set()
    return [p for p in out if (p[0], p[1]) not in seen and not seen.add((p[0], p[1]))]


# -- metadata values ----------------------------------------------------------------------


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


def _scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool))


def _clean(v: Any) -> Any:
    """JSON-safe: non-finite floats become their text ('nan'), so they never compare as numbers."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_key(key: str, levels: Sequence[str]) -> str:
    """A user metadata key, validated (the ``--where`` language must be able to name it)."""
    if not _KEY_RE.match(key):
        raise InvalidArgument(
            f"{key!r}: not a usable metadata key (a letter or _, then letters, digits, _ . -; at most 128)"
        )
    if key in BUILTINS or key in levels:
        raise InvalidArgument(f"{key!r}: reserved (every record has it); choose another name")
    return key


# -- sidecar files ---------------------------------------------------------------------------


class SidecarError(ValueError):
    """A sidecar file that cannot be used at all (not JSON, not an object)."""


_KINDS: dict[str, Callable[[Any], bool]] = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": _is_number,
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "list of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "string or list of strings": lambda v: isinstance(v, str)
    or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
}


def _pick(obj: dict, spec: Mapping[str, tuple[str, str]], out: dict, problems: list[str]) -> None:
    """Copy ``spec``'s keys (source key → (our key, kind)) from ``obj``; wrong kinds go to ``problems``."""
    for src, (dst, kind) in spec.items():
        if src not in obj or obj[src] is None:
            continue
        v = obj[src]
        if _KINDS[kind](v):
            out[dst] = _clean(v)
        else:
            problems.append(f"{src}: expected {kind}, got {type(v).__name__}")


_TRAINER_STATE = {
    "global_step": ("global_step", "integer"),
    "epoch": ("epoch", "number"),
    "best_metric": ("best_metric", "number"),
    "best_model_checkpoint": ("best_model_checkpoint", "string"),
    "max_steps": ("max_steps", "integer"),
    "num_train_epochs": ("num_train_epochs", "number"),
    "train_batch_size": ("train_batch_size", "integer"),
    "total_flos": ("total_flos", "number"),
}
_CONFIG = {
    "model_type": ("model_type", "string"),
    "architectures": ("architectures", "list of strings"),
    "torch_dtype": ("torch_dtype", "string"),
    "dtype": ("torch_dtype", "string"),  # the newer transformers name
    "hidden_size": ("hidden_size", "integer"),
    "num_hidden_layers": ("num_hidden_layers", "integer"),
    "num_attention_heads": ("num_attention_heads", "integer"),
    "intermediate_size": ("intermediate_size", "integer"),
    "vocab_size": ("vocab_size", "integer"),
    "max_position_embeddings": ("max_position_embeddings", "integer"),
    "transformers_version": ("transformers_version", "string"),
}
_ADAPTER_CONFIG = {
    "base_model_name_or_path": ("base_model", "string"),
    "peft_type": ("peft_type", "string"),
    "task_type": ("task_type", "string"),
    "r": ("r", "integer"),
    "lora_alpha": ("lora_alpha", "number"),
    "lora_dropout": ("lora_dropout", "number"),
    "target_modules": ("target_modules", "string or list of strings"),
}
_TRAINING_ARGS = {
    "learning_rate": ("learning_rate", "number"),
    "num_train_epochs": ("num_train_epochs", "number"),
    "max_steps": ("max_steps", "integer"),
    "per_device_train_batch_size": ("per_device_train_batch_size", "integer"),
    "per_device_eval_batch_size": ("per_device_eval_batch_size", "integer"),
    "gradient_accumulation_steps": ("gradient_accumulation_steps", "integer"),
    "seed": ("seed", "integer"),
    "warmup_steps": ("warmup_steps", "integer"),
    "warmup_ratio": ("warmup_ratio", "number"),
    "weight_decay": ("weight_decay", "number"),
    "max_grad_norm": ("max_grad_norm", "number"),
    "lr_scheduler_type": ("lr_scheduler_type", "string"),
    "optim": ("optim", "string"),
    "bf16": ("bf16", "boolean"),
    "fp16": ("fp16", "boolean"),
    "gradient_checkpointing": ("gradient_checkpointing", "boolean"),
}


def _trainer_state(obj: dict, out: dict, problems: list[str]) -> None:
    _pick(obj, _TRAINER_STATE, out, problems)
    history = obj.get("log_history")
    if history is None:
        return
    if not isinstance(history, list):
        problems.append(f"log_history: expected a list, got {type(history).__name__}")
        return
    entries = [e for e in history if isinstance(e, dict)]
    last_eval = next((e for e in reversed(entries) if any(k.startswith("eval_") for k in e)), None)
    if last_eval is not None:
        for k, v in last_eval.items():
            if k.startswith("eval_") and _KEY_RE.match(k) and _is_number(v):
                out[k] = _clean(v)
        if _KINDS["integer"](last_eval.get("step")):
            out["eval_step"] = last_eval["step"]
    last_train = next((e for e in reversed(entries) if _is_number(e.get("loss"))), None)
    if last_train is not None:
        out["train_loss"] = _clean(last_train["loss"])


def _user_file(obj: dict, out: dict, problems: list[str]) -> None:
    for k, v in obj.items():
        if not _KEY_RE.match(k) or k in BUILTINS:
            problems.append(f"{k!r}: not a usable key")
        elif v is None:
            continue
        elif _scalar(v) or (isinstance(v, list) and all(_scalar(x) for x in v)):
            out[k] = _clean(v)
        else:
            problems.append(f"{k}: expected a string, number, boolean or list of them (the object is flat)")


SIDECARS: dict[str, Callable[[dict, dict, list[str]], None]] = {
    "config.json": lambda o, out, p: _pick(o, _CONFIG, out, p),
    "adapter_config.json": lambda o, out, p: _pick(o, _ADAPTER_CONFIG, out, p),
    "training_args.json": lambda o, out, p: _pick(o, _TRAINING_ARGS, out, p),
    "trainer_state.json": _trainer_state,
    "chunkfs.json": _user_file,
}
"""The files metadata is extracted from, in order of precedence (a later file's key wins)."""


def extract_sidecar(filename: str, data: bytes) -> tuple[dict[str, Any], list[str]]:
    """(metadata, problems) of one sidecar file; ``SidecarError`` if it cannot be used at all."""
    if len(data) > MAX_SIDECAR:
        raise SidecarError(f"larger than {MAX_SIDECAR >> 20} MiB")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise SidecarError(f"not valid JSON ({str(e)[:120]})") from None
    if not isinstance(obj, dict):
        raise SidecarError(f"expected a JSON object, got {type(obj).__name__}")
    out: dict[str, Any] = {}
    problems: list[str] = []
    SIDECARS[filename](obj, out, problems)
    return out, problems


# -- records -----------------------------------------------------------------------------------


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

    def get(self, key: str) -> Any:
        """A field, builtin or metadata value by name (None if the record has none)."""
        if key in self.fields:
            return self.fields[key]
        if key in BUILTINS:
            return {"step": self.step, "path": self.path, "commit": self.commit, "time": self.time_ns}[key]
        return self.meta.get(key)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        del d["ino"]
        return d


def _new_doc(path: str) -> dict[str, Any]:
    return {"path": path, "src": {}, "user": {}, "problems": {}}


def _merged(doc: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    src = doc.get("src", {})
    for name in SIDECARS:
        meta.update(src.get(name, {}))
    meta.update(doc.get("user", {}))
    return meta


# -- the query language ----------------------------------------------------------------------

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
        if _is_number(actual):
            return not self.quoted and _is_number(self.value) and _OPS[self.op](actual, self.value)
        if isinstance(actual, str):
            if self.op not in ("==", "!=") and not self.quoted and _is_number(self.value):
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
        if not _KEY_RE.match(key):
            raise UsageError(f"--sort {spec!r}: {key!r} is not a key name (use KEY or -KEY)")
        out.append((key, desc))
    return out


def _sort_key(v: Any) -> tuple:
    if _is_number(v):
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


# -- the registry --------------------------------------------------------------------------------


class Registry:
    """Checkpoint records of one repository: kept by the tree's hooks, read by queries."""

    def __init__(self, index: Index, settings: RegistrySettings | None = None) -> None:
        self.index = index
        self.settings = settings or RegistrySettings()
        self.levels = self.settings.level_names
        self._pattern = re.compile(self.settings.step_pattern)
        self.metric = self.settings.best_metric
        self._largest = self.settings.best_mode == "max"
        self._read_built()

    # -- paths ------------------------------------------------------------------------------

    def parse(self, path: str) -> ParsedPath | None:
        """Fields and step of ``path`` if a directory there would be a checkpoint (by its name)."""
        return parse_checkpoint(path, len(self.levels), self._pattern)

    def level_of(self, path: str) -> str | None:
        """The level directory ``path`` is for the checkpoints below it (None: there are none).

        The FUSE layer shows ``@latest``/``@best`` in a directory when this is not None.
        """
        if not _components(path):
            return None
        with self.index.read() as t:
            for prefix, open_last, level in dir_prefixes(path, self.levels):
                if next(t.ckpt_groups(prefix, open_last=open_last), None) is not None:
                    return level
        return None

    @staticmethod
    def path_in(t: Txn, ino: int) -> str:
        """The path of ``ino`` as the transaction ``t`` sees it."""
        parts = []
        while ino != ROOT_INODE:
            links = t.parents(ino)
            if not links:
                raise NotFound(f"inode {ino}: has no parent (unlinked)")
            ino, name = links[0]
            parts.append(name.decode(errors="surrogateescape"))
        return "/" + "/".join(reversed(parts))

    @staticmethod
    def _resolve(t: Txn, path: str) -> int:
        ino = ROOT_INODE
        for part in _components(path):
            child = t.dirent_get(ino, part.encode(errors="surrogateescape"))
            if child is None:
                raise NotFound(f"{path}: no such file or directory")
            ino = child
        return ino

    def _ino(self, t: Txn, target: int | str) -> int:
        return target if isinstance(target, int) else self._resolve(t, target)

    # -- hooks: called by the tree inside its write transaction --------------------------------

    def on_dir_changed(self, t: Txn, ino: int, path: str | None = None) -> None:
        """Directory ``ino`` was created, or moved/renamed to ``path``: create, re-key or drop records.

        For a directory that has entries (a rename) every directory below is
        re-keyed too (``reindex_subtree``).
        """
        self.ensure_built(t)
        path = path if path is not None else self.path_in(t, ino)
        if t.has_dirents(ino):
            self.reindex_subtree(t, ino, path)
        else:
            self._index_dir(t, ino, path, self._enclosing(t, ino))

    def reindex_subtree(self, t: Txn, ino: int, path: str | None = None) -> list[int]:
        """Re-derive the records of directory ``ino`` and every directory below it; their inodes."""
        self.ensure_built(t)
        path = path if path is not None else self.path_in(t, ino)
        return self._walk(t, ino, path, self._enclosing(t, ino), None)

    def on_dir_removed(self, t: Txn, ino: int) -> bool:
        """Directory ``ino`` was removed (or replaced by a rename): drop its record."""
        self.ensure_built(t)
        return t.ckpt_delete(ino)

    @staticmethod
    def wants(filename: str | bytes, size: int | None = None) -> bool:
        """Whether ``on_file_committed`` should be given this file's bytes (a sidecar file)."""
        if isinstance(filename, bytes):
            filename = filename.decode(errors="surrogateescape")
        return filename in SIDECARS and (size is None or size <= MAX_SIDECAR)

    def on_file_committed(
        self, dir_ino: int, filename: str | bytes, data: bytes | None = None, *, txn: Txn | None = None
    ) -> bool:
        """A file of directory ``dir_ino`` was committed; ``data``: its bytes if ``wants`` it.

        Marks the checkpoint as changed now (``--latest`` ties) and re-extracts
        a sidecar's metadata. A malformed sidecar is logged and skipped (the
        record keeps everything else); this never raises for bad file content.
        Returns whether ``dir_ino`` is a checkpoint.
        """
        name = filename.decode(errors="surrogateescape") if isinstance(filename, bytes) else filename
        extracted: tuple[dict, list[str]] | str | None = None
        if data is not None and name in SIDECARS:
            try:
                extracted = extract_sidecar(name, data)
            except SidecarError as e:
                extracted = str(e)
        if txn is None:
            with self.index.write() as t:
                return self._apply_file(t, dir_ino, name, extracted)
        return self._apply_file(txn, dir_ino, name, extracted)

    def on_file_removed(self, t: Txn, dir_ino: int, filename: str | bytes) -> bool:
        """A file of directory ``dir_ino`` was removed: forget what its sidecar said."""
        name = filename.decode(errors="surrogateescape") if isinstance(filename, bytes) else filename
        self.ensure_built(t)
        got = t.ckpt_get(dir_ino)
        if got is None or name not in SIDECARS:
            return False
        fields, step, _, _, _, doc = got
        doc.get("src", {}).pop(name, None)
        doc.get("problems", {}).pop(name, None)
        self._store(t, dir_ino, fields, step, doc, touched=False)
        return True

    def on_xattr(self, t: Txn, ino: int, name: str | bytes, value: bytes | None) -> bool:
        """``setxattr``/``removexattr`` (``value`` None) of ``ino``: ``user.chunkfs.KEY`` sets KEY.

        Returns False (nothing to do) for other names and for directories that
        are not checkpoints; raises ``InvalidArgument`` for an unusable KEY.
        """
        if isinstance(name, bytes):
            name = name.decode(errors="surrogateescape")
        if not name.startswith(XATTR_PREFIX):
            return False
        self.ensure_built(t)
        got = t.ckpt_get(ino)
        if got is None:
            return False
        key = check_key(name[len(XATTR_PREFIX) :], self.levels)
        fields, step, _, _, _, doc = got
        user = doc.setdefault("user", {})
        if value is None:
            user.pop(key, None)
        else:
            user[key] = parse_value(value.rstrip(b"\x00").decode(errors="surrogateescape"))
        self._store(t, ino, fields, step, doc, touched=False)
        return True

    # -- keeping records ---------------------------------------------------------------------------

    def _enclosing(self, t: Txn, ino: int) -> int | None:
        """The nearest ancestor of ``ino`` that is a checkpoint."""
        while ino != ROOT_INODE:
            links = t.parents(ino)
            if not links:
                return None
            ino = links[0][0]
            if ino != ROOT_INODE and t.ckpt_key_of(ino) is not None:
                return ino
        return None

    @staticmethod
    def _holds_files(t: Txn, ino: int) -> bool:
        for _, child in t.dirents(ino):
            rec = t.inode_get(child)
            if rec is not None and not stat.S_ISDIR(rec.mode):
                return True
        return False

    def _index_dir(self, t: Txn, ino: int, path: str, enclosing: int | None, saved=None) -> bool:
        """Give ``ino`` the record its path and place call for; whether it is a checkpoint."""
        parsed = self.parse(path)
        outer = t.ckpt_key_of(enclosing) if parsed is not None and enclosing is not None else None
        if outer is not None:
            if outer[1] == parsed.step and self._holds_files(t, enclosing):
                parsed = None  # checkpoint-500/global_step500: part of the checkpoint
            else:
                level = t.ckpt_get(enclosing)[-1].get("path", f"inode {enclosing}")
                t.ckpt_delete(enclosing)  # it was a level that happens to end in a number
                log.info("%s: a level above checkpoint %s, no longer a checkpoint itself", level, path)
        if parsed is None:
            t.ckpt_delete(ino)
            return False
        old = saved.pop(ino, None) if saved is not None else t.ckpt_get(ino)
        if old is None:
            self._store(t, ino, parsed.fields, parsed.step, _new_doc(path), touched=True)
            return True
        commit, time_ns, doc = old[-4], old[-3], old[-1]
        moved = doc.get("path") != path
        doc["path"] = path
        self._store(t, ino, parsed.fields, parsed.step, doc, touched=moved, stamp=(commit, time_ns))
        return True

    def _walk(self, t: Txn, ino: int, path: str, enclosing: int | None, saved) -> list[int]:
        found = []
        stack = [(ino, path, enclosing)]
        while stack:
            d, p, enc = stack.pop()
            if d != ROOT_INODE and self._index_dir(t, d, p, enc, saved):
                found.append(d)
                enc = d
            base = p.rstrip("/")
            for name, child in t.dirents(d):
                rec = t.inode_get(child)
                if rec is not None and stat.S_ISDIR(rec.mode):
                    stack.append((child, f"{base}/{name.decode(errors='surrogateescape')}", enc))
        return [d for d in found if t.ckpt_key_of(d) is not None]  # some were levels after all

    def _metric_of(self, doc: dict) -> float | None:
        v = _merged(doc).get(self.metric)
        return float(v) if _is_number(v) and math.isfinite(v) else None

    def _store(self, t: Txn, ino: int, fields, step: int, doc: dict, *, touched: bool, stamp=None) -> None:
        if stamp is None and not touched:
            old = t.ckpt_get(ino)
            stamp = (old[2], old[3]) if old is not None else None
        if touched or stamp is None:
            stamp = (t.last_commit(), clock.now_ns())
        t.ckpt_put(ino, fields, step, stamp[0], stamp[1], self._metric_of(doc), doc)

    def _apply_file(self, t: Txn, dir_ino: int, name: str, extracted) -> bool:
        self.ensure_built(t)
        got = t.ckpt_get(dir_ino)
        if got is None:
            return False
        fields, step, _, _, _, doc = got
        src, problems = doc.setdefault("src", {}), doc.setdefault("problems", {})
        where = f"{doc.get('path', f'inode {dir_ino}')}/{name}"
        if isinstance(extracted, str):
            log.warning("%s: %s; skipped", where, extracted)
            src.pop(name, None)
            problems[name] = extracted
        elif extracted is not None:
            values, issues = extracted
            src[name] = values
            if issues:
                log.warning("%s: ignored %s", where, "; ".join(issues))
                problems[name] = "ignored " + "; ".join(issues)
            else:
                problems.pop(name, None)
        self._store(t, dir_ino, fields, step, doc, touched=True)
        return True

    def _read_built(self) -> None:
        """Compare the settings the databases were built with to ours (a read: works read-only)."""
        self._want = {
            "levels": list(self.levels),
            "step_pattern": self.settings.step_pattern,
            "metric": self.metric,
        }
        with self.index.read() as t:
            have = t.registry_settings()
            empty = t.ckpt_count() == 0
        same = {k: empty or (have or {}).get(k) == v for k, v in self._want.items()}
        self._built = have == self._want
        self._keys_ok = same["levels"] and same["step_pattern"]
        self._metric_ok = same["metric"]
        self._warned = False

    def ensure_built(self, txn: Txn | None = None) -> None:
        """Bring the databases in line with the settings: after a change of ``registry.levels``
        or ``step_pattern`` every record is re-keyed from the tree (metadata kept), after a
        change of ``best_metric`` the metric index is refilled. Every write calls this first;
        the mount may call it once at start. Needs a writable index."""
        if self._built:
            return
        if txn is None:
            with self.index.write() as t:
                self._build(t)
        else:
            self._build(txn)

    def _build(self, t: Txn) -> None:
        have = t.registry_settings()
        if have != self._want:
            if have is not None and t.ckpt_count():
                if any(have.get(k) != self._want[k] for k in ("levels", "step_pattern")):
                    log.warning("registry levels or step pattern changed: re-keying every checkpoint record")
                    self._rebuild(t)
                elif have.get("metric") != self.metric:
                    self._remetric(t)
            t.registry_settings_put(self._want)
        self._built = self._keys_ok = self._metric_ok = True

    def _check_read(self) -> None:
        if not self._keys_ok and not self._warned:
            self._warned = True
            log.warning(
                "checkpoint records were built with other [registry] levels or step_pattern; results follow "
                "the old ones until the repository is mounted or `chunkfs meta scan` runs"
            )

    def _rebuild(self, t: Txn) -> int:
        saved = {row[0]: row[1:] for row in t.ckpt_all()}
        t.ckpt_clear()
        return len(self._walk(t, ROOT_INODE, "/", None, saved))

    def _remetric(self, t: Txn) -> None:
        for ino, fields, step, commit, time_ns, _, doc in list(t.ckpt_all()):
            t.ckpt_put(ino, fields, step, commit, time_ns, self._metric_of(doc), doc)

    # -- user metadata -----------------------------------------------------------------------------

    def _checkpoint(self, ino: int, fields, step: int, commit: int, time_ns: int, doc: dict) -> Checkpoint:
        return Checkpoint(
            ino=ino,
            path=doc.get("path", ""),
            fields=dict(zip(self.levels, fields)),
            step=step,
            commit=commit,
            time_ns=time_ns,
            meta=_merged(doc),
            user=dict(doc.get("user", {})),
            extracted={k: dict(v) for k, v in doc.get("src", {}).items()},
            problems=dict(doc.get("problems", {})),
        )

    def _record(self, t: Txn, ino: int, target: int | str) -> Checkpoint:
        got = t.ckpt_get(ino)
        if got is None:
            raise NotFound(
                f"{target}: not a checkpoint directory (a directory whose name ends in a step number, "
                f"below its run directory; see docs/registry.md)"
            )
        fields, step, commit, time_ns, _, doc = got
        return self._checkpoint(ino, fields, step, commit, time_ns, doc)

    def get_meta(self, target: int | str) -> Checkpoint:
        """The record of a checkpoint directory (inode or repository path)."""
        with self.index.read() as t:
            return self._record(t, self._ino(t, target), target)

    def set_meta(self, target: int | str, values: Mapping[str, Any], *, txn: Txn | None = None) -> Checkpoint:
        """Set user metadata of a checkpoint (text values are parsed: '0.231' → 0.231; None removes).

        Each key is mirrored as the ``user.chunkfs.KEY`` extended attribute, so
        ``getfattr`` through a mount shows what ``chunkfs meta set`` set.
        """
        clean: dict[str, Any] = {}
        for key, v in values.items():
            check_key(key, self.levels)
            if isinstance(v, str):
                v = parse_value(v)
            elif not (v is None or _scalar(v) or (isinstance(v, list) and all(_scalar(x) for x in v))):
                raise InvalidArgument(f"{key}: a value must be a string, number, boolean or a list of them")
            clean[key] = _clean(v)
        if txn is None:
            with self.index.write() as t:
                return self._set(t, target, clean)
        return self._set(txn, target, clean)

    def _set(self, t: Txn, target: int | str, values: dict[str, Any]) -> Checkpoint:
        self.ensure_built(t)
        ino = self._ino(t, target)
        rec = self._record(t, ino, target)
        got = t.ckpt_get(ino)
        fields, step, _, _, _, doc = got
        user = doc.setdefault("user", {})
        for key, v in values.items():
            xname = (XATTR_PREFIX + key).encode()
            if v is None:
                user.pop(key, None)
                t.xattr_delete(ino, xname)
            else:
                user[key] = v
                t.xattr_put(ino, xname, value_text(v).encode(errors="surrogateescape"))
        self._store(t, ino, fields, step, doc, touched=False)
        return dataclasses.replace(rec, user=dict(user), meta=_merged(doc))

    # -- queries ---------------------------------------------------------------------------------------

    def _filters(self, fields: Mapping[str, str | None]) -> dict[int, str]:
        flt = {}
        for name, value in fields.items():
            if name not in self.levels:
                known = ", ".join(self.levels)
                raise UsageError(f"no level named {name!r} in this repository (levels: {known})")
            if value is not None:
                flt[self.levels.index(name)] = value
        return flt

    def _groups(self, t: Txn, flt: Mapping[int, str]) -> Iterator[tuple[str, ...]]:
        """Every group (run) matching level filters, by the cheapest index."""
        lead = []
        for i in range(len(self.levels)):
            if i not in flt:
                break
            lead.append(flt[i])
        last = len(self.levels) - 1
        if lead:
            groups = t.ckpt_groups(tuple(lead))
        elif last in flt:
            groups = t.ckpt_run_groups(flt[last])
        else:
            groups = t.ckpt_groups(())
        for g in groups:
            if all(g[i] == v for i, v in flt.items()):
                yield g

    def _rows(self, t: Txn, flt: Mapping[int, str]) -> Iterator[tuple]:
        """(fields, step, inode, commit, time ns, metric, document) of every record matching
        level filters: a range scan of ``ckpts`` (by leading levels) or of ``ckpt_run``."""
        lead = []
        for i in range(len(self.levels)):
            if i not in flt:
                break
            lead.append(flt[i])
        last = len(self.levels) - 1
        if not lead and last in flt:
            rows = self._with_records(t, t.ckpt_run_scan(flt[last]))
        else:
            rows = t.ckpt_rows(tuple(lead))
        for row in rows:
            if all(row[0][i] == v for i, v in flt.items()):
                yield row

    @staticmethod
    def _with_records(t: Txn, keys: Iterable[tuple[tuple[str, ...], int, int]]) -> Iterator[tuple]:
        for fields, step, ino in keys:
            got = t.ckpt_record(fields, step, ino)
            if got is not None:
                yield (fields, step, ino, *got)

    def find(
        self,
        *,
        step: int | None = None,
        where: str | Sequence[Condition] | None = None,
        sort: str | None = None,
        latest: bool = False,
        limit: int | None = None,
        fields: Mapping[str, str | None] | None = None,
        **levels: str | None,
    ) -> list[Checkpoint]:
        """Checkpoints matching level values (``model=``, ``run=``, … by level name), a step and a
        ``where`` expression; ``latest``: only the newest (by step, then time of last change);
        ``sort``: ``KEY`` or ``-KEY`` (descending), comma-separated; ``limit``: at most that many.
        Without ``sort``, records come in key order (levels, then step)."""
        flt = self._filters({**(fields or {}), **levels})
        conds = parse_where(where) if isinstance(where, str) else list(where or [])
        if sort:
            parse_sort(sort)  # bad syntax is an error even when nothing matches
        if limit is not None and limit < 0:
            raise UsageError("--limit must not be negative")
        out: list[Checkpoint] = []
        self._check_read()
        with self.index.read() as t:
            if step is not None:
                keys = ((g, step, ino) for g in self._groups(t, flt) for ino in t.ckpt_at_step(g, step))
                rows: Iterable = self._with_records(t, keys)
            elif latest and not conds:
                rows = self._with_records(t, self._newest_rows(t, self._groups(t, flt)))
            else:
                rows = self._rows(t, flt)
            for fields_, step_, ino, commit, time_ns, _, doc in rows:
                if conds:
                    named = dict(zip(self.levels, fields_))
                    builtin = {"step": step_, "path": doc.get("path"), "commit": commit, "time": time_ns}
                    meta = _merged(doc)
                    value = {**meta, **builtin, **named}.get
                    if not all(c.matches(value(c.key)) for c in conds):
                        continue
                out.append(self._checkpoint(ino, fields_, step_, commit, time_ns, doc))
        if latest and out:
            out = [max(out, key=lambda r: (r.step, r.time_ns, r.commit, r.ino))]
        out.sort(key=lambda r: (tuple(r.fields.values()), r.step, r.ino))
        if sort:
            out = sort_records(out, sort)
        return out[:limit] if limit is not None else out

    @staticmethod
    def _newest_rows(t: Txn, groups: Iterable[tuple[str, ...]]) -> list[tuple[tuple[str, ...], int, int]]:
        best = None
        for g in groups:
            for step, ino, commit, time_ns in t.ckpt_newest(g):
                cand = (step, time_ns, commit, ino)
                if best is None or cand > best[0]:
                    best = (cand, g)
        return [] if best is None else [(best[1], best[0][0], best[0][3])]

    def _target_groups(self, t: Txn, target: Target) -> list[tuple[str, ...]]:
        self._check_read()
        if isinstance(target, str):
            return [
                g
                for prefix, open_last, _ in dir_prefixes(target, self.levels)
                for g in t.ckpt_groups(prefix, open_last=open_last)
            ]
        if isinstance(target, Mapping):
            return list(self._groups(t, self._filters(target)))
        return list(t.ckpt_groups(tuple(target)))

    def _latest_in(self, t: Txn, groups: Iterable[tuple[str, ...]]) -> str | None:
        rows = self._newest_rows(t, groups)
        if not rows:
            return None
        got = t.ckpt_record(*rows[0])
        return got[-1].get("path") if got is not None else None

    def _best_in(self, t: Txn, groups: Iterable[tuple[str, ...]]) -> str | None:
        best = None
        for g in groups:
            if self._metric_ok:
                end = t.ckpt_metric_end(g, largest=self._largest)
                ends = [end] if end is not None else []
            else:  # the index holds another metric until the next write rebuilds it: read the records
                metrics = ((self._metric_of(row[-1]), row[1], row[2]) for row in t.ckpt_rows(g))
                ends = [m for m in metrics if m[0] is not None]
            for metric, step, ino in ends:
                cand = (metric if self._largest else -metric, step, ino)
                if best is None or cand > best[0]:
                    best = (cand, g)
        if best is None:
            return None
        got = t.ckpt_record(best[1], best[0][1], best[0][2])
        return got[-1].get("path") if got is not None else None

    def latest(self, target: Target) -> str | None:
        """Path of the newest checkpoint (by step, then time of last change) below ``target``:
        a directory path, a mapping of level names to values, or the leading level values."""
        with self.index.read() as t:
            return self._latest_in(t, self._target_groups(t, target))

    def best(self, target: Target) -> str | None:
        """Path of the checkpoint below ``target`` with the best ``registry.best_metric``
        (min or max by ``registry.best_mode``; ties: the later step); None if none has it."""
        with self.index.read() as t:
            return self._best_in(t, self._target_groups(t, target))

    def links(self, directory: str | int) -> dict[str, str]:
        """The ``@latest``/``@best`` entries of a directory (path or inode): name → symlink
        target relative to the directory. Empty for the root and for directories with no
        checkpoint below them. A few range scans: cheap enough for every FUSE lookup."""
        out = {}
        with self.index.read() as t:
            path = self.path_in(t, directory) if isinstance(directory, int) else directory
            if not _components(path):
                return {}
            groups = self._target_groups(t, path)
            if not groups:
                return {}
            base = "/" + "/".join(_components(path))
            for name, target in ((LATEST, self._latest_in(t, groups)), (BEST, self._best_in(t, groups))):
                if target:
                    out[name] = posixpath.relpath(target, base)
        return out

    # -- maintenance -----------------------------------------------------------------------------------

    def sidecar_files(self, path: str = "/") -> list[tuple[int, int]]:
        """(inode, size) of every sidecar file of a step directory below ``path`` (a read)."""
        out = []
        comps = _components(path)
        with self.index.read() as t:
            stack = [(self._resolve(t, path), comps[-1] if comps else "")]
            while stack:
                d, dname = stack.pop()
                is_step = step_of(dname, self._pattern) is not None
                for name, child in t.dirents(d):
                    rec = t.inode_get(child)
                    if rec is None:
                        continue
                    if stat.S_ISDIR(rec.mode):
                        stack.append((child, name.decode(errors="surrogateescape")))
                    elif is_step and stat.S_ISREG(rec.mode) and self.wants(name, rec.size):
                        out.append((child, rec.size))
        return out

    def scan(self, path: str = "/", read_file: Callable[[int], bytes | None] | None = None) -> ScanResult:
        """Re-derive every record below ``path`` from the tree, and (with ``read_file``, which
        returns a file's bytes by inode, or None to skip it) re-extract every sidecar file.
        For repositories written before the hooks ran."""
        result = ScanResult()
        base = "/" + "/".join(_components(path))
        with self.index.write() as t:
            self.ensure_built(t)
            found = set(self.reindex_subtree(t, self._resolve(t, base), base))
            for row in list(t.ckpt_all()):
                doc_path = row[-1].get("path", "")
                below = base == "/" or doc_path == base or doc_path.startswith(base + "/")
                if row[0] not in found and below:
                    t.ckpt_delete(row[0])  # a record the hooks did not drop
                    result.dropped += 1
            todo = []
            for d in sorted(found):
                for name, child in t.dirents(d):
                    rec = t.inode_get(child)
                    if rec is not None and stat.S_ISREG(rec.mode) and self.wants(name):
                        todo.append((d, name.decode(), child, rec.size))
        result.checkpoints = len(found)
        if read_file is None:
            return result
        for i in range(0, len(todo), 1000):
            batch = []
            for d, name, child, size in todo[i : i + 1000]:
                data = read_file(child) if size <= MAX_SIDECAR else None
                if data is None:
                    continue
                try:
                    extracted = extract_sidecar(name, data)
                except SidecarError as e:
                    extracted = str(e)
                batch.append((d, name, extracted))
            with self.index.write() as t:
                for d, name, extracted in batch:
                    self._apply_file(t, d, name, extracted)
            result.sidecars += len(batch)
        return result


@dataclass
class ScanResult:
    checkpoints: int = 0
    sidecars: int = 0
    dropped: int = 0
