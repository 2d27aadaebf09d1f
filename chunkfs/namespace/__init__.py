"""The namespace: the directory tree, file manifests and (later) versions and records."""

from chunkfs.namespace.tree import Namespace

__all__ = ["Namespace"]
