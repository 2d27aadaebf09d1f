"""Operations that rewrite or copy stored packs for safety and space: rewrite, sweep, cold repack, replicas, metadata backups."""
