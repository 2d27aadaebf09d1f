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

The modules, from the bottom up:

* ``keypath``    — a path → its composite key and step; the key prefixes below a directory (pure)
* ``values``     — metadata key names and values: validation, parsing, JSON-safety (pure)
* ``sidecars``   — metadata extracted from the files training frameworks write (pure)
* ``checkpoint`` — the stored record document and the ``Checkpoint`` queries return (pure)
* ``query``      — the ``--where``/``--sort`` language (pure)
* ``scans``      — which index range scans answer a query (reads of one transaction)
* ``treewalk``   — the directory tree read inside a transaction: inode ↔ path, entries
* ``records``    — the ``Registry``: the tree's hooks, settings rebuilds, user metadata, queries
"""

from chunkfs.namespace.registry.checkpoint import Checkpoint
from chunkfs.namespace.registry.keypath import ParsedPath, dir_prefixes, fields_of, parse_checkpoint, step_of
from chunkfs.namespace.registry.query import Condition, parse_sort, parse_where, sort_records
from chunkfs.namespace.registry.records import BEST, LATEST, XATTR_PREFIX, Registry, ScanResult
from chunkfs.namespace.registry.scans import Target
from chunkfs.namespace.registry.sidecars import MAX_SIDECAR, SIDECARS, SidecarError, extract_sidecar
from chunkfs.namespace.registry.values import BUILTINS, check_key, parse_value, value_text

__all__ = [
    "BEST",
    "BUILTINS",
    "LATEST",
    "MAX_SIDECAR",
    "SIDECARS",
    "XATTR_PREFIX",
    "Checkpoint",
    "Condition",
    "ParsedPath",
    "Registry",
    "ScanResult",
    "SidecarError",
    "Target",
    "check_key",
    "dir_prefixes",
    "extract_sidecar",
    "fields_of",
    "parse_checkpoint",
    "parse_sort",
    "parse_value",
    "parse_where",
    "sort_records",
    "step_of",
    "value_text",
]
