"""Admin operations: one library function per CLI command that is more than a lookup."""
