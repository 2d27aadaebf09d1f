"""The LMDB index: the only package that imports ``lmdb``.

``env.Index`` opens the environment; ``txn.Txn`` gives typed access inside a
transaction; ``keys`` documents and encodes every database.
"""

from chunkfs.index.env import Index
from chunkfs.index.txn import Txn

__all__ = ["Index", "Txn"]
