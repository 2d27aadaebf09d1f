"""Where objects live: one interface, a local directory and S3 behind it, opened by location URL."""
