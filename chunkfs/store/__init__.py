"""Stored bytes, in four rooms (docs/architecture.md):

* ``pack/`` — the pack file format, writing and reading pack files, and the pack store that
  appends chunks to open packs and reads them back through the index;
* ``backends/`` — where objects live: the interface, a local directory, S3, locations by URL,
  and which repository owns an object;
* ``tiering/`` — the tiers and moving packs between them under the tier lock: lifecycle
  policies, write-back uploads, reads from remote tiers and their disk cache, placement audit;
* ``maintenance/`` — rewriting packs (the one rewrite primitive, gc's sweep, the re-encoding repack),
  replicas and metadata backups.
"""
