"""The index's tables, one module per section of keys.py; ``index.txn.Txn`` joins them into one class.

Each module holds the typed access to the databases of one section (the byte layouts
stay in keys.py): ``base`` (meta, chunks, packs), ``tree`` (inodes, entries, manifests,
xattrs), ``history`` (commits, directory and inode history, tags), ``registry``
(checkpoint records), ``tiers`` (write-back queue, copies, moves, runs, pins, counters),
``operations`` (replicas, drills, metadata backups), ``gc`` (condemned chunks,
leases) and ``cluster`` (a shared repository's journal and log position). They are mixins of one transaction: a method may call another section's
(a directory entry records its history; a manifest resurrects condemned chunks).
"""
