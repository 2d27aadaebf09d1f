"""One repository shared by several nodes through its warm tier (docs/multinode.md).

``log`` holds the objects in the bucket (the shared log, its configuration, the members'
heartbeats), ``entries`` the encoding of one log entry, ``publish`` sends this node's
journaled changes (``namespace/journal.py``) once their packs are on the warm tier,
``replay`` applies the other nodes' entries to this node's index, and ``node`` runs both
for a repository.
"""
