"""The chunk engine: format detection, tensor-aligned chunking, hashing, compression,
and the streaming file writer/reader built on them."""
