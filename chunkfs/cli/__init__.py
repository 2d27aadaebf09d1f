"""The command line: a thin client of the library API (``chunkfs.repo``, ``chunkfs.ops``)."""
