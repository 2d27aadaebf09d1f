"""chunkfs: a content-addressed chunk store and FUSE filesystem for ML checkpoints.

The library API is ``chunkfs.repo.Repository``; the CLI (``chunkfs.cli``) and the
FUSE layer (``chunkfs.fs``) are thin clients of it. See docs/ and DESIGN.md.
"""

__version__ = "0.1.0"
