"""Engine worker processes: the chunk work of a mount, off the daemon's request path.

``pool.py`` is the daemon's side (``WriterPool``, ``RemoteContent``), ``worker.py`` the
process, ``ring.py`` the shared-memory hand-off between them. docs/concurrency.md says
who does what; docs/performance.md why.
"""
