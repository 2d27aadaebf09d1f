"""Stored bytes: pack format, pack writer and reader, backends (local; S3 later)."""
