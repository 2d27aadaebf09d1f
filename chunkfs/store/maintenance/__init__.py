"""Operations that rewrite or copy stored packs for safety and space: rewrite, sweep, re-encoding repack, replicas, metadata backups."""
