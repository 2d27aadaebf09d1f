"""Pack files: their format, writing and reading them, and the store that locates chunks in them."""
