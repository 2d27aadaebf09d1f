"""Typed access to the index databases inside one LMDB transaction.

Layers above the index see only ``Txn``: they read and write chunk locations, packs,
inodes, directory entries, manifests, history, checkpoint records, tier state and gc
state, cluster state as Python values; the byte layouts stay in ``keys.py``. ``Txn`` joins the tables
of every section of keys.py, one module each (``index/tables/``).
"""

from __future__ import annotations

from chunkfs.index.tables.base import BaseTables
from chunkfs.index.tables.cluster import ClusterTables
from chunkfs.index.tables.gc import GcTables, Lease
from chunkfs.index.tables.history import HistoryTables, Tag
from chunkfs.index.tables.operations import OperationsTables, Replica
from chunkfs.index.tables.registry import CkptRow, RegistryTables
from chunkfs.index.tables.tiers import RunRecord, TierTables
from chunkfs.index.tables.tree import TreeTables

__all__ = ["CkptRow", "Lease", "Replica", "RunRecord", "Tag", "Txn"]


class Txn(
    TreeTables, HistoryTables, RegistryTables, TierTables, OperationsTables, GcTables, ClusterTables, BaseTables
):
    """One open LMDB transaction (read-only or write) with typed helpers for every table."""
